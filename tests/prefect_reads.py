"""Reading back what flow runs published, through the Prefect API of the test server."""

import asyncio

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId


def artifacts_of(*flow_run_ids) -> list:
    """The artifacts of these flow runs only: the server is shared by every test of a process."""

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=list(flow_run_ids))
                )
            )

    return asyncio.run(read())
