"""`torchrun --nproc-per-node N -m glyph_rt.train {cpt,sft,rl} --config FILE [key=value ...]`: `glyph-rt train`."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
