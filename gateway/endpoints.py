"""The API paths the gateway serves under a run, named once: completions and the tokenizer's."""

from __future__ import annotations

COMPLETION_ENDPOINTS = ("/v1/completions", "/v1/chat/completions")
# Path -> HTTP method. Tokenizer calls are cheap look-ups, counted apart from completions in reports.
TOKENIZER_ENDPOINTS = {"/tokenizer_info": "GET", "/tokenize": "POST", "/detokenize": "POST"}
