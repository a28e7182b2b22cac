"""The arguments every quality-type study takes, and the calibration windows it cuts from a text."""

from __future__ import annotations

import argparse

from optimum_gatenorm.criteria.calibration import Calibration


def study_parser(doc: str, *, max_tokens: int, window: int, output_dir: str) -> argparse.ArgumentParser:
    """The arguments every quality-type study takes (evaluation window, calibration size, output directory)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--window", type=int, default=window)
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--calibration-length", type=int, default=128)
    parser.add_argument("--output-dir", default=output_dir)
    return parser


def make_calibration(tokenizer, text_path, args):
    return Calibration.from_files(
        [text_path],
        tokenizer,
        num_samples=args.calibration_samples,
        length=args.calibration_length,
        bos=getattr(args, "bos", None),
    )
