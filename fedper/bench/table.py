"""The console summary of a benchmark report (bench.json holds every number)."""

from __future__ import annotations


def megabytes(value: float) -> str:
    """Bytes as whole megabytes."""
    return f"{value / 1e6:.0f}"


def peak_processes(memory: dict, key: str = "peak_rss_by_process_bytes") -> str:
    """Each process at the peak: MB RSS (private/files/shared memory), and its PSS and USS
    when they were read at that peak."""

    def shares(p: dict) -> str:
        return f" PSS {megabytes(p['pss'])} USS {megabytes(p['uss'])}" if "uss" in p else ""

    return (
        ", ".join(
            f"{p['name']} {megabytes(p['rss'])} ({megabytes(p['anon'])}/{megabytes(p['file'])}/"
            f"{megabytes(p['shmem'])}){shares(p)}"
            for p in sorted(memory[key], key=lambda p: -p["rss"])
        )
        + " (MB RSS (private/files/shared memory))"
    )


def format_table(report: dict) -> str:
    """The federated-vs-plain benchmark on the console."""
    fed, plain, scen = report["federated"], report["plain"], report["scenario"]
    lines = [
        f"{scen['algorithm']} · {scen['model']} x{scen['width_multiplier']} · {scen['dataset']}"
        f" ({scen['dataset_size']} images, {scen['image_size']} px): {scen['num_clients']} "
        f"clients x ~{scen['train_images_per_client']:.0f} train images, "
        f"{scen['num_epochs']} epoch(s), batch {scen['batch_size']}, {scen['num_rounds']} rounds",
        f"Ray actors (counted as Flower counts them): {scen['ray_actors']}",
        f"plain loop: {scen['plain_loop']}",
        "",
        f"{'':28}{'round 1 (s)':>12}{'later rounds (s)':>18}{'images/s':>10}"
        f"{'step (ms)':>11}{'accuracy':>10}",
    ]
    for name, part in (("federated (Flower on Ray)", fed), ("plain PyTorch loop", plain)):
        lines.append(
            f"{name:28}{part['first_round_seconds']:12.2f}{part['round_seconds_after_first']:18.2f}"
            f"{part['images_per_second']:10.0f}{part['train_step_ms']:11.1f}"
            f"{part['final_accuracy']:10.3f}"
        )
    lines.append(
        f"{'ratio federated / plain':28}{report['ratio_first_round']:12.2f}{report['ratio']:18.3f}"
    )
    lines.append(
        f"ratio at equal compute (each round over its own clients' compute): "
        f"{report['ratio_at_equal_compute']:.3f}"
    )
    lines += ["", "federated round, later rounds (s of wall time):"]
    for key, value in fed["overhead"]["per_round"].items():
        lines.append(f"  {key:26}{value:8.3f}")
    lines.append("per client call (s): " + ", ".join(
        f"{k} {v:.4f}" for k, v in fed["overhead"]["per_client_call"].items()
    ))  # fmt: skip
    lines.append("  in round 1: " + ", ".join(
        f"{k} {v:.4f}" for k, v in fed["overhead"]["first_round"]["per_client_call"].items()
    ))  # fmt: skip
    lines += ["", "preparing one client's data (load_client_data):"]
    for prep in report["client_data_preparation"].values():
        lines.append(
            f"  {prep['client_images']} images from a {prep['pool_images']}-image pool: "
            f"median {prep['median_ms']:.2f} ms (read from disk: {prep['cold_median_ms']:.1f} ms)"
        )
    lines += ["", *resource_lines(report)]
    if report.get("gpu_check"):
        lines += ["", *gpu_lines(report["gpu_check"])]
    return "\n".join(lines)


def resource_lines(report: dict) -> list[str]:
    """Peak memory by process, CPU seconds by process, and the targets."""
    memory, cpu = report["memory"], report["cpu_seconds_by_process"]
    return [
        f"peak memory, federated run, all {memory['peak_processes']} processes: "
        f"{memory['peak_all_processes_bytes'] / 1e9:.2f} GB summed RSS (Ray's own processes "
        f"{memory['ray_helpers_rss_bytes'] / 1e9:.2f} GB), "
        f"{memory['pss_near_peak_all_processes_bytes'] / 1e9:.2f} GB summed PSS (driver ru_maxrss "
        f"{memory['driver_ru_maxrss_bytes'] / 1e9:.2f} GB); plain loop: "
        f"{memory['plain_peak_all_processes_bytes'] / 1e9:.2f} GB",
        "at the peak: " + peak_processes(memory),
        "plain loop at its peak: " + peak_processes(memory, "plain_peak_rss_by_process_bytes"),
        "CPU seconds, federated run: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu["federated"].items())
        + "; plain loop: "
        + ", ".join(f"{k} {v:.1f}" for k, v in cpu["plain"].items()),
        "targets: " + ", ".join(f"{k} {v}" for k, v in report["targets"].items()),
    ]


def gpu_lines(check: dict) -> list[str]:
    """The GPU check: device, images/s of both sides, and the switches the workers used."""
    lines = [f"GPU check: {check['gpu_name']} (sm {check['capability']}), torch {check['torch']}"]
    lines.append(
        f"  images/s at {check['image_size']} px: federated {check['federated_images_per_second']:.0f}"
        f", plain loop {check['plain_images_per_second']:.0f}; step {check['plain_step_ms']:.1f} ms"
    )
    lines.append(
        f"  bf16 autocast: {'on' if check['bf16'] else 'off'}, channels_last: "
        f"{'on' if check['channels_last'] else 'off'} (as the plain loop's client core resolved "
        "them; the federated clients resolve them the same way)"
    )
    if check.get("federated_device"):
        lines.append(f"  the federated run's clients reported: {check['federated_device']}")
    return lines
