"""Post-training (Tülu 3 recipe) on the one training loop: SFT and LoRA (sft.py, chat_data.py,
lora.py, recipe.py); DPO/GRPO maths (logps.py, dpo.py, grpo.py) and verifiers; the offline
instruct data (demo_data.py, wheel_qa.py). Objectives plug into olmo2/train/objective.py."""
