"""The benchmark suite beside the product: `make bench`, `python -m hpsearch.bench`.

hpsearch itself never imports this package; it runs with the package deleted.
"""
