"""Write the demo's instruction data: `python -m dtm_hf.demo_data demo.jsonl [N_PER_SKILL]`."""

import sys

from .demo.data import write_demo_jsonl

if __name__ == "__main__":
    print(write_demo_jsonl(sys.argv[1] if len(sys.argv) > 1 else "demo.jsonl",
                           int(sys.argv[2]) if len(sys.argv) > 2 else 200))
