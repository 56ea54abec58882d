"""One ``/metrics`` for a server of several processes: the engine's and every front end's, added up.

Counters and histograms are summed series by series (each process counts what it did: a front end its RPCs and
requests, the engine its batches); gauges come from the engine alone (queue depth, readiness, routes, loaded
versions: the engine's state), since a front end's copy of them would be counted once per front end. The result
is the Prometheus text format with one ``# HELP``/``# TYPE`` per family, as a single process would export it.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def merge(engine: str, fronts: list[str]) -> str:
    """The engine's exposition and the front ends', as one."""
    families: dict[str, tuple[str, str, dict]] = {}  # name → (type, help, {(sample name, labels): value})
    for index, text in enumerate([engine, *fronts]):
        for family in text_string_to_metric_families(text):
            kind, doc, samples = families.setdefault(family.name, (family.type, family.documentation, {}))
            if family.type == "gauge" and index > 0:
                continue
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = samples.get(key, 0.0) + sample.value
    lines = []
    for name, (kind, doc, samples) in families.items():
        help_text = doc.replace("\\", r"\\").replace("\n", r"\n")
        # As prometheus_client writes them: a counter's header names its samples (``_total``); the parser reads
        # the text format's "untyped" (Triton's bare-named counters) as "unknown", which the format has no word
        # for (Prometheus would refuse the whole scrape).
        header = f"{name}_total" if kind == "counter" else name
        lines.append(f"# HELP {header} {help_text}")
        lines.append(f"# TYPE {header} {'untyped' if kind == 'unknown' else kind}")
        for (sample, labels), value in samples.items():
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{sample}{{{label_text}}} {floatToGoString(value)}" if labels
                         else f"{sample} {floatToGoString(value)}")
    return "\n".join(lines) + "\n"
