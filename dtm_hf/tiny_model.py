"""Write the demo's tiny Llama and its tokenizer: `python -m dtm_hf.tiny_model OUTPUT_DIR`."""

import sys

from .demo.data import demo_texts
from .demo.tiny_model import save_tiny_llama

if __name__ == "__main__":
    print(save_tiny_llama(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama", demo_texts()))
