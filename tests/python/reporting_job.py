"""A reporting job written outside Rust, as a practice's billing or research export
would be: it reads the newest retention report from the reports stream, asks the
`circle` micro service for the same report, and finds the service via $SRV.PING.

Usage: reporting_job.py NATS_URL NAMESPACE GROUP_ID   (prints one JSON object)
"""
import asyncio
import json
import sys

import nats


async def main(url: str, namespace: str, group_id: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    stream = f"{namespace.upper()}_REPORTS"
    subject = f"{namespace}.reports.retention.group.{group_id}"
    message = await js.get_last_msg(stream, subject)
    reply = await nc.request(
        f"{namespace}.api.reports.retention",
        json.dumps({"group_id": group_id}).encode(),
        timeout=5,
    )
    ping = await nc.request("$SRV.PING.circle", b"", timeout=5)
    print(
        json.dumps(
            {
                "published": json.loads(message.data),
                "circle_position": (message.headers or {}).get("Circle-Position"),
                "answered": json.loads(reply.data),
                "service": json.loads(ping.data).get("name"),
            }
        )
    )
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
