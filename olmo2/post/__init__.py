"""Post-training (Tülu 3 recipe) on the one training loop: SFT and LoRA (sft.py, chat_data.py,
lora.py, recipe.py); DPO/GRPO objectives plug into olmo2/train/objective.py the same way."""
