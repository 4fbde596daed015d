#!/usr/bin/env python3
"""`python run_study.py --trials 50` is `hpsearch run --trials 50`: tune a CNN, resumably."""

from hpsearch.cli import run_study_main

if __name__ == "__main__":
    run_study_main()
