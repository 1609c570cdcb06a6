"""SIR proposal count vs Langevin steps: sample quality (Frechet distance on the
128-d small-classifier features that the evaluation uses, with its bootstrap
error) and time, group-wise and joint, on one trained run (like the paper's Table 6).

    python bench/ncp_sampler_table.py RUN_DIR [--num-generated 1000] [--out bench/results/x.json]
"""
import argparse
import json
import platform
import time

import torch

from ncpfast.data import load_dataset
from ncpfast.frechet import extract_features, fd_summary, feature_network
from ncpfast.trained_run import load_ncp, load_run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--num-generated", type=int, default=1000)
    p.add_argument("--proposals", type=int, nargs="+", default=[5, 50, 500])
    p.add_argument("--steps", type=int, nargs="+", default=[5, 50, 500])
    p.add_argument("--step-size", type=float, default=1e-2)
    p.add_argument("--modes", nargs="+", choices=["group", "joint"], default=["group", "joint"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config, vae = load_run(args.run_dir, device)
    ncp = load_ncp(args.run_dir, vae)
    train, test = load_dataset(config.data.dataset, config.data.data_dir)
    features = feature_network(train, test, device, progress=False)
    real = extract_features(features.net.features, test.batch(torch.arange(min(len(test), 1000))).to(device))
    settings = [("base", {})] + [
        (method, {**kw, "mode": mode}) for mode in args.modes
        for method, kw in [("sir", {"num_proposals": m}) for m in args.proposals]
        + [("langevin", {"steps": t, "step_size": args.step_size}) for t in args.steps]]
    rows = []
    for method, kw in settings:
        g = torch.Generator(device).manual_seed(args.seed)
        start = time.perf_counter()
        images = torch.cat([ncp.sample(min(250, args.num_generated - i), method=method, generator=g, **kw)
                            for i in range(0, args.num_generated, 250)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        fd = fd_summary(extract_features(features.net.features, images), real)
        rows.append(dict(method=method, **kw, seconds=seconds, **fd))
        print(f"{method:9s} {json.dumps(kw):55s} FD {fd['fd']:8.3f} +- {fd['fd_std_error']:.3f}  {seconds:7.2f} s "
              f"for {args.num_generated} images", flush=True)
    result = dict(run_dir=args.run_dir, device=str(device), machine=platform.processor() or platform.machine(),
                  threads=torch.get_num_threads(), num_generated=args.num_generated,
                  fd_feature_net=features.describe(), rows=rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
