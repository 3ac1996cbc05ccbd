"""What the parent `train-and-sample` run tells: one line a stage as it starts and ends, a keyed
`run-summary` artifact kept current as stages finish (each stage's state, time and link, the
best checkpoint's metrics against their real-versus-real floors, the sample grid), and a
closing summary on the console."""

from __future__ import annotations

import dataclasses
import json
import pathlib

from prefect.artifacts import create_markdown_artifact

from tasks.evaluate import format_floor, format_ratio
from tasks.render import embedded_png

SUMMARY_KEY = "run-summary"


@dataclasses.dataclass
class StageRecord:
    name: str
    state: str = "running"
    seconds: float | None = None
    flow_run_id: str | None = None


@dataclasses.dataclass
class RunSummary:
    run_dir: pathlib.Path
    stages: list[StageRecord] = dataclasses.field(default_factory=list)
    best_step: int | None = None
    metrics_path: str | None = None
    grid: str | None = None

    def learn(self, result: dict) -> None:
        """Takes what the summary shows from a stage's result: the evaluation's best step and
        metrics file, the sample stage's grid."""
        if "best_step" in result:
            self.best_step, self.metrics_path = result["best_step"], result["metrics_path"]
        self.grid = result.get("grid.png", self.grid)

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
            "# train-and-sample",
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
        if self.grid and pathlib.Path(self.grid).is_file():
            lines += ["", "## Samples", "", f"![samples]({embedded_png(pathlib.Path(self.grid))})"]
        return "\n".join(lines)

    def publish(self) -> None:
        """A new version of the parent's `run-summary` artifact (the UI shows the latest)."""
        create_markdown_artifact(
            key=SUMMARY_KEY,
            markdown=self.markdown(),
            description="stages, best checkpoint, samples",
        )

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
