"""Table 5's transformer rows: one zoo, then one pipeline run per alignment method (TransFusion, Git Re-Basin, none).

The zoo is trained by the first run and its stage copied into the others, so
the methods differ in nothing but the alignment. Each row also records the
`python -m dwf_jax.main` command that computes the same run.
"""

import pathlib
import time
from collections.abc import Callable, Sequence

import ml_collections

from dwf_jax import pipeline
from dwf_jax.data import load_configured
from dwf_jax.session import copy_stages
from dwf_jax.workdir import Workdir
from experiments import common


def main_command(config: ml_collections.ConfigDict, config_file: str, keys: Sequence[str]) -> str:
    """The `python -m dwf_jax.main` command that computes the same run: `keys` are the settings that differ."""
    values = {key: config[key.split(".")[0]][key.split(".")[1]] for key in ("data.dir", *keys, "canonical.method")}
    values.update({"baselines.noise_stds": "()", "baselines.mixtures": 0, "baselines.average_of": 0})
    values["baselines.gaussian"] = 0
    return f"python -m dwf_jax.main --config={config_file} " + " ".join(
        f"--config.{key}={value}" for key, value in values.items()
    )


def run_methods(
    make_config: Callable[[str], ml_collections.ConfigDict],
    methods: Sequence[str],
    workdir_stem: pathlib.Path,
    config_file: str,
    keys: Sequence[str],
) -> list[dict]:
    """One summary row per method, all from the zoo the first run trains."""
    rows, zoo_source = [], None
    for method in methods:
        config = make_config(method)
        config.canonical.method = method
        config.baselines.update(
            noise_stds=(), mixtures=0, average_of=0, gaussian=0
        )  # the baselines are measured on the MLP zoos
        workdir = workdir_stem.with_name(f"{workdir_stem.name}_{method}")
        if zoo_source is not None:
            dataset = load_configured(config.data)
            copy_stages(Workdir(zoo_source), pipeline.workdir_for(config, dataset, workdir), ("zoo",))
        start = time.perf_counter()
        report = pipeline.run(config, workdir, progress=True)
        row = common.run_summary(report, workdir, round(time.perf_counter() - start, 1))
        row.update(
            method=method,
            metric=report["metric"],
            command=main_command(config, config_file, keys),
            canonicalization=report["canonicalization"],
        )
        rows.append(row)
        zoo_source = zoo_source or workdir
    return rows


def markdown(title: str, rows: list[dict], provenance: dict, setting: str, paper: str, digits: int) -> str:
    """The result file: one line per method, scores with `digits` decimals, then the equivalent commands."""

    def stats(values: dict) -> str:
        return f"{values['mean']:.{digits}f} ± {values['std']:.{digits}f}"

    lines = [
        *common.header_lines(title, provenance),
        f"Data: {rows[0]['dataset']['source']}  ",
        f"{setting}; flow: {rows[0]['flow_space']}; metric: {rows[0]['metric']}",
        "",
        "| alignment | original | generated | generated min | L2 to reference before -> after "
        "| alignment time, whole zoo (s) | flow (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        canonical, timings = row["canonicalization"], row["timings"]
        lines.append(
            f"| {row['method']} | {stats(row['original_accuracy'])} | {stats(row['generated_accuracy'])} "
            f"| {row['generated_accuracy']['min']:.{digits}f} "
            f"| {canonical['distance_to_reference_before']['mean']:.2f} -> "
            f"{canonical['distance_to_reference_after']['mean']:.2f} "
            f"| {timings.get('canonical', float('nan')):.1f} | {timings.get('flow', float('nan')):.1f} |"
        )
    lines += ["", f"Paper (Table 5): {paper}.", "", "Equivalent commands:", ""]
    lines += [f"- `{row['command']}`" for row in rows]
    return "\n".join(lines) + "\n"
