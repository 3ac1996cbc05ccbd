"""What the parent `train-and-sample` run tells: one line a stage as it starts and ends, a keyed
`run-summary` artifact kept current as stages finish (each stage's state, time and link, links
to the stages' reports, the best checkpoint's metrics against their real-versus-real floors,
the sample grid and the sampling GIF), and a closing summary on the console.

The run has one `run-summary` at a time: each new version says what it covers ("after
evaluate: 3 of 4 stages done") and replaces the one before, so the card a user opens in the run's
Artifacts tab is the current one."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from tasks.evaluate import format_floor, format_ratio
from tasks.render import shown_images

SUMMARY_KEY = "run-summary"
# The stages' own reports the summary links to, by artifact key.
REPORTS = {"checkpoint-metrics": "checkpoint metrics", "sample-report": "sample report"}


@dataclasses.dataclass
class StageRecord:
    name: str
    state: str = "running"
    seconds: float | None = None
    flow_run_id: str | None = None


@dataclasses.dataclass
class RunSummary:
    run_dir: pathlib.Path
    total_stages: int
    stages: list[StageRecord] = dataclasses.field(default_factory=list)
    best_step: int | None = None
    metrics_path: str | None = None
    grid: str | None = None
    gif: str | None = None
    reports: dict[str, str] = dataclasses.field(default_factory=dict)  # title -> artifact id
    published: str | None = None  # the current version's artifact id

    def learn(self, result: dict) -> None:
        """Takes what the summary shows from a stage's result: the evaluation's best step and
        metrics file, the sample stage's grid and GIF."""
        if "best_step" in result:
            self.best_step, self.metrics_path = result["best_step"], result["metrics_path"]
        self.grid = result.get("grid.png", self.grid)
        self.gif = result.get("sampling.gif", self.gif)

    def link_reports(self, flow_run_id: str) -> None:
        """Finds the REPORTS a stage's run published, to link them from the summary."""
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                    key=ArtifactFilterKey(any_=list(REPORTS)),
                )
            )
        for artifact in sorted(found, key=lambda a: a.created):
            self.reports[REPORTS[artifact.key]] = str(artifact.id)

    def covers(self) -> str:
        """What this version of the summary covers, e.g. "after evaluate: 3 of 4 stages done"."""
        done = sum(stage.state == "Completed" for stage in self.stages)
        counted = f"{done} of {self.total_stages} stages done"
        last = self.stages[-1] if self.stages else None
        if last is None:
            return f"starting: {counted}"
        if last.state == "Completed":
            return (
                "all stages done" if done == self.total_stages else f"after {last.name}: {counted}"
            )
        if last.state == "running":
            return f"during {last.name}: {counted}"
        return f"{last.name} {last.state.lower()}: {counted}"

    def best_metrics(self) -> list[tuple[str, float, float | None]]:
        """(name, value, floor) of the best checkpoint's metrics, from eval/metrics.json."""
        if not self.metrics_path or self.best_step is None:
            return []
        saved = json.loads(pathlib.Path(self.metrics_path).read_text())
        row = next((r for r in saved["rows"] if r["step"] == self.best_step), None)
        if row is None:
            return []
        return [(name, m["value"], m["floor"]) for name, m in row["metrics"].items()]

    def markdown(self) -> str:
        lines = [
            f"# train-and-sample: {self.covers()}",
            "",
            f"Run directory: `{self.run_dir}`",
            "",
            "| stage | state | time |",
            "|---|---|---|",
        ]
        for stage in self.stages:
            name = stage.name
            if stage.flow_run_id:
                name = f"[{stage.name}](/runs/flow-run/{stage.flow_run_id})"
            took = "" if stage.seconds is None else f"{stage.seconds:.0f} s"
            lines.append(f"| {name} | {stage.state} | {took} |")
        metrics = self.best_metrics()
        if metrics:
            lines += [
                "",
                f"## Best checkpoint: step {self.best_step}",
                "",
                "| metric | value | real-vs-real floor | value / floor |",
                "|---|---|---|---|",
            ]
            for name, value, floor in metrics:
                lines.append(
                    f"| {name} | {value:.4g} | {format_floor(floor)} | {format_ratio(value, floor) or '-'} |"
                )
        if self.reports:
            lines += ["", "## Reports", ""]
            lines += [
                f"- [{title}](/artifacts/artifact/{id_})" for title, id_ in self.reports.items()
            ]
        images = [("samples", self.grid), ("sampling", self.gif)]
        shown = [(t, pathlib.Path(p)) for t, p in images if p and pathlib.Path(p).is_file()]
        if shown:
            lines += ["", "## Samples", "", *shown_images(shown)]
        return "\n".join(lines).rstrip() + "\n"

    def publish(self) -> None:
        """The parent's `run-summary` artifact, current: a new version saying what it covers,
        and the version before it deleted."""
        created = create_markdown_artifact(
            key=SUMMARY_KEY, markdown=self.markdown(), description=self.covers()
        )
        previous, self.published = self.published, str(created)
        if previous is not None:
            with get_client(sync_client=True) as client:
                client.delete_artifact(previous)

    def closing_lines(self) -> list[str]:
        total = sum(s.seconds or 0.0 for s in self.stages)
        times = ", ".join(
            f"{s.name} {s.seconds:.0f} s" for s in self.stages if s.seconds is not None
        )
        lines = [f"Done in {total:.0f} s ({times})."]
        metrics = self.best_metrics()
        if metrics:
            shown = "; ".join(
                f"{name} {value:.4g} (floor {format_floor(floor)}, {format_ratio(value, floor) or '-'})"
                for name, value, floor in metrics
            )
            lines.append(f"Best checkpoint: step {self.best_step}: {shown}.")
        lines.append(f"Outputs in {self.run_dir}: eval/metrics.json, samples/, render/")
        return lines
