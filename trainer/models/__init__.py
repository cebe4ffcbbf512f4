"""The model side: tokenizer and base model loaded (quantized) as every trial loads them (`loading`),
LoRA target modules (`targets`), chat markers added as trained tokens (`special_tokens`), and the
offline tiny chat model built on first use (`tiny_chat`)."""
