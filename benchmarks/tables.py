"""The benchmark's text tables, rendered from its results dict (or its JSON file alone).

    python benchmarks/tables.py out.json      # print the tables of a finished run
"""

from __future__ import annotations

import json
import sys


def _fmt_s(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"


def _floor_lines(floor: dict | None, rounds: dict) -> list[str]:
    """The conv floor (benchmarks/conv_floor.py) and each round's median as a multiple of it."""
    if not floor:
        return []
    if floor.get("skipped"):
        return [f"conv floor: skipped ({floor['skipped']})"]
    from benchmarks.conv_floor import format_floor

    f = floor["floor_s"]
    rows = [(k, r["seconds"]["median"]) for k, r in rounds.items()
            if isinstance(r, dict) and (r.get("seconds") or {}).get("n")]
    out = [format_floor(floor)]
    if rows:
        out.append("  round median / floor: " + ", ".join(f"{k} {t / f:.2f}x" for k, t in rows))
    torch_rows = [t for k, t in rows if k.startswith("torch")]
    if torch_rows:
        out.append(f"  the fastest torch round / floor = {min(torch_rows) / f:.2f}x: the largest "
                   "speed-up over it that a round built on these convolution kernels can reach "
                   "here")
    return out


def format_tables(data: dict) -> str:
    lines = []
    env = data.get("environment", {})
    cfg = data.get("config", {})
    lines.append(f"backend {env.get('backend')} x{env.get('devices')} ({env.get('device_kind')}), "
                 f"jax {env.get('jax')}, {env.get('cpu_count')} CPUs, load average "
                 f"{data.get('load_before')} -> {data.get('load_after')}")
    lines.append(f"size: {cfg.get('clients')} clients x {cfg.get('train_per_client')} images, "
                 f"{cfg.get('image_size')}x{cfg.get('image_size')}, width {cfg.get('width')}, "
                 f"batch {cfg.get('batch_size')}, dtype {cfg.get('dtype')}, selection "
                 f"{cfg.get('selection')}, repeats {cfg.get('repeats')} (interleaved)")
    peak = data.get("matmul_peak")
    if peak:
        lines.append(f"matmul peak (f32 jnp.dot {peak['n']}^2): {peak['gflops']:.1f} GFLOP/s "
                     f"median, {peak['gflops_best']:.1f} best")
    rounds = data.get("rounds", {})
    if rounds:
        lines.append("")
        lines.append(f"{'round variant':<14}{'devices':>8}  {'seconds median [min, max]':<28}"
                     f"{'client-img/s':>13}{'vs baseline':>12}{'vs torch':>10}{'compile s':>10}"
                     f"{'RSS peak MB':>12}{'dev peak MB':>12}")
        for name, r in rounds.items():
            if name.startswith("_"):
                continue
            if "error" in r and not r.get("seconds"):
                lines.append(f"{name:<14}  FAILED: {r['error'][:100]}")
                continue
            mem = r.get("memory", {})
            dev = (mem.get("device") or {}).get("peak_mb_in_use")
            lines.append(
                f"{name:<14}{r.get('devices', 1):>8}  {_fmt_s(r.get('seconds')):<28}"
                f"{r.get('client_images_per_s', float('nan')):>13.1f}"
                f"{r.get('speedup_vs_baseline', float('nan')):>11.2f}x"
                f"{r.get('speedup_vs_torch', float('nan')):>9.2f}x"
                f"{r.get('compile_s', float('nan')):>10.1f}"
                f"{(mem.get('host') or {}).get('rss_peak_mb', float('nan')):>12.0f}"
                f"{dev if dev is not None else float('nan'):>12.0f}")
    torch_row = data.get("torch")
    if torch_row:
        if torch_row.get("skipped"):
            lines.append(f"PyTorch baseline: skipped ({torch_row['skipped']})")
        else:
            variants = torch_row.get("variants") or {"torch": torch_row}
            threads = ", ".join(f"{k} {v.get('threads')}" for k, v in variants.items())
            ref = next((r.get("torch_reference") for r in rounds.values()
                        if isinstance(r, dict) and r.get("torch_reference")), "torch")
            lines.append(f"PyTorch baseline: torch {torch_row.get('version')} on "
                         f"{torch_row.get('device')}, threads: {threads}; the 'vs torch' "
                         f"column is the round time of the fastest of them ({ref}) / the row's")
            paired = {k: r["speedup_vs_torch_paired"] for k, r in rounds.items()
                      if isinstance(r, dict) and "speedup_vs_torch_paired" in r
                      and not k.startswith("torch")}
            if paired:
                lines.append("  median of the per-repeat ratios vs " + ref + ": " + ", ".join(
                    f"{k} {v:.2f}x" for k, v in paired.items()))
    lines.extend(_floor_lines(data.get("conv_floor"), rounds))
    check = data.get("baseline_check")
    if check:
        lines.append(f"baseline computes the same round as {check['between'][0]}: "
                     f"{check['agree']} (counts equal {check['counts_equal']}, loss1 rel diff "
                     f"{check['loss1_max_rel_diff']:.1e}, weights rel diff "
                     f"{check['weights_max_rel_diff']:.1e}, params max/median abs diff "
                     f"{check['global_params_max_abs_diff']:.1e}/"
                     f"{check['global_params_median_abs_diff']:.1e})")
    parts = data.get("parts")
    if parts:
        lines.append("")
        lines.append(f"{'part':<26}{'seconds median [min, max]':<28}{'rate':>22}{'speed-up':>10}")
        for k in ("pseudo_labels", "local_training", "aggregation"):
            for who in ("round", "baseline"):
                r = parts.get(f"{k}_{who}")
                if not r:
                    continue
                if "images_per_s" in r:
                    rate = f"{r['images_per_s']:.1f} img/s"
                elif "client_images_per_s" in r:
                    rate = f"{r['client_images_per_s']:.1f} client-img/s"
                else:
                    rate = ""
                sp = f"{parts.get(k + '_speedup', float('nan')):.2f}x" if who == "round" else ""
                lines.append(f"{k + ' (' + who + ')':<26}{_fmt_s(r['seconds']):<28}{rate:>22}"
                             f"{sp:>10}")
        st = parts.get("train_step")
        if st:
            frac = st.get("fraction_of_matmul_peak")
            im = st.get("interleaved_matmul", {})
            lines.append(f"train step (2 models, batch {st['batch']}): {_fmt_s(st['seconds'])} s,"
                         f" {(st.get('flops') or 0) / 1e9:.2f} GFLOP (XLA cost analysis), "
                         f"{st.get('gflops_per_s', float('nan')):.1f} GFLOP/s = "
                         f"{(frac if frac is not None else float('nan')) * 100:.0f}% of the "
                         f"matmul peak timed alternately with it ({im.get('gflops', 0):.1f} "
                         f"GFLOP/s, f32 {im.get('n')}^2)")
            lt = parts.get("local_training_round", {})
            if "fraction_of_matmul_peak" in lt:
                lb = parts["local_training_baseline"]
                lines.append(f"local training (round, {lt.get('steps')} steps): "
                             f"{lt['gflops_per_s']:.1f} GFLOP/s = "
                             f"{lt['fraction_of_matmul_peak'] * 100:.0f}% of the peak; baseline "
                             f"{lb['fraction_of_matmul_peak'] * 100:.0f}%")
    prof = data.get("profile")
    if prof and prof.get("rows"):
        lines.append("")
        gfs = prof.get("gflops_per_s")
        lines.append(f"profile of the train step ({prof['wall_per_call']:.3f} s per call under "
                     f"the profiler, {prof.get('gflop', 0):.2f} GFLOP by XLA's cost analysis, "
                     f"{gfs if gfs is not None else float('nan'):.1f} GFLOP/s; shares of summed "
                     "event time by HLO opcode):")
        lines.append(f"  {'opcode':<22}{'ms':>9}{'share':>8}{'events':>8}")
        for r in prof["rows"]:
            lines.append(f"  {r['category']:<22}{r['seconds'] * 1e3:>9.1f}"
                         f"{(r['share'] or 0) * 100:>7.1f}%{r.get('events', 0):>8}")
    sweep = data.get("sweep")
    if sweep and sweep.get("rows"):
        lines.append("")
        lines.append(f"sweep ({sweep.get('executor')}; baseline where run):")
        lines.append(f"  {'clients':>7}{'size':>6}{'images':>8}  {'round s median [min, max]':<28}"
                     f"{'client-img/s':>13}{'compile s':>10}{'baseline s':>11}{'speed-up':>9}")
        for r in sweep["rows"]:
            if r.get("error"):
                lines.append(f"  {r['clients']:>7}{r['image_size']:>6}  FAILED: {r['error'][:80]}")
                continue
            b = r.get("baseline_seconds")
            lines.append(f"  {r['clients']:>7}{r['image_size']:>6}{r['images']:>8}  "
                         f"{_fmt_s(r['seconds']):<28}{r['client_images_per_s']:>13.1f}"
                         f"{r['compile_s']:>10.1f}"
                         f"{(b['median'] if b else float('nan')):>11.3f}"
                         f"{r.get('speedup_vs_baseline', float('nan')):>8.2f}x")
    mp = data.get("mixed_precision")
    if mp:
        lines.append("")
        lines.append("computation dtype (params float32):")
        for k, r in mp.items():
            if "error" in r:
                lines.append(f"  {k:<10} FAILED: {r['error'][:100]}")
                continue
            lines.append(f"  {k:<10} round {_fmt_s(r['seconds'])} s, test Dice after "
                         f"{r['rounds']} rounds {r['mean_dice']:.4f}")
    errors = data.get("errors")
    if errors:
        lines.append("")
        lines.extend(f"section {e['section']} failed: {e['error'][:200]}" for e in errors)
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(format_tables(json.load(f)))
