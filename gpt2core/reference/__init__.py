"""The reference GPT-2, the code a student reads: its config, the model (one small class per component, each op
plain PyTorch), the hook points that capture and edit it, loading and saving weights, and which device it is on."""
