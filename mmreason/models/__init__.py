"""The policy: loading a vision-language model (`policy`), the tiny offline models (`tiny`), and one module per model
family holding every fact that differs between families (`family` is the seam the rest of mmreason asks).
"""
