"""Trains the Frechet-distance feature network by ncpfast.frechet's RECIPE and
saves it as the weights that ship with the package (by default those of the
embedded MNIST, ncpfast/fd_feature_net_mnist_embedded.pt).

    PYTHONPATH=. python scripts/train_fd_feature_net.py [--dataset mnist-embedded] \
        [--data-dir DIR] [--out ncpfast/fd_feature_net_mnist_embedded.pt] [--threads 1]

It prints the test accuracy, the file's size and sha256, and the data hash. After
retraining the shipped file, set SHIPPED_SHA256 (and SHIPPED_DATA_HASH when
RECIPE changed) in ncpfast/frechet.py to the printed values: the package refuses
weights whose sha256 differs. A rerun on another CPU gives other weights in the
last bits (AVX2 and AVX-512 kernels round differently), which is why the file
is shipped rather than retrained on each machine. About 2 minutes on one core.
"""
import argparse
import os
import sys
import time

import torch

from ncpfast import frechet
from ncpfast.data import DATASETS, load_dataset


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist-embedded", choices=DATASETS)
    parser.add_argument("--data-dir", default=None, help="the data set's directory (not for mnist-embedded)")
    parser.add_argument("--out", default=frechet.SHIPPED_WEIGHTS, help="where to write the weights")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    train, test = load_dataset(args.dataset, args.data_dir)
    key = frechet.data_hash(train, test)
    start = time.perf_counter()
    net = frechet.train_feature_net(train, progress=True)
    seconds = time.perf_counter() - start
    accuracy, _ = frechet.save_feature_net(net, test, key, args.out)
    os.chmod(args.out, 0o644)  # save_atomic's temporary file is private (0600); pip installs the mode as is
    print(f"recipe: {frechet.RECIPE}")
    print(f"trained in {seconds:.0f} s on {args.threads} thread(s); test accuracy {100 * accuracy:.1f}% "
          f"on {len(test)} images")
    print(f"wrote {args.out}: {os.path.getsize(args.out)} bytes")
    print(f"SHIPPED_DATA_HASH = \"{key}\"")
    print(f"SHIPPED_SHA256 = \"{frechet.file_sha256(args.out)}\"")
    return 0


if __name__ == "__main__":
    sys.exit(main())
