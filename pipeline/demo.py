"""What ``make demo`` prints after the nightly DAG ran: stage figures, three users' lists, the reader's SQL."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from pipeline.db.engine import connect, database_url
from pipeline.nightly import STAGES
from pipeline.runs import make_run_id, parse_as_of, run_stats

READ_SQL = ("SELECT item_id, reason FROM recsys.user_recommendations "
            "WHERE user_id = {uid} ORDER BY rank LIMIT 20")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--as-of", required=True)
    args = ap.parse_args(argv)
    console = Console(width=140)
    url = database_url()
    run_id = make_run_id("rerank_nightly", parse_as_of(args.as_of))
    stats = run_stats(url, run_id)
    table = Table(title=f"run {run_id}: {stats.get('status')}")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("figures", overflow="fold")
    stages = stats.get("stages", {})
    for name in [n for n in STAGES if n in stages]:
        info = dict(stages[name])
        secs = info.pop("seconds", 0.0)
        parts = []
        for k, v in info.items():
            if isinstance(v, dict) and all(not isinstance(x, dict | list) for x in v.values()):
                parts.append(f"{k}: " + " ".join(f"{kk}={vv}" for kk, vv in v.items()))
            elif isinstance(v, dict):  # e.g. validate's per-table counts
                inner = {kk: vv for kk, vv in v.items() if not isinstance(vv, dict | list)}
                parts.append(f"{k}: " + " ".join(f"{kk}={vv}" for kk, vv in inner.items()))
            elif not isinstance(v, list):
                parts.append(f"{k}={v}")
        table.add_row(name, f"{secs:.2f}", ", ".join(parts))
    console.print(table)

    with connect(url) as conn, conn.cursor() as cur:
        # Two returning users with the most activity, and one user with no events before as_of.
        cur.execute(
            "SELECT user_id FROM shop.events WHERE ts < %s GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 2",
            (parse_as_of(args.as_of),),
        )
        sample = [r[0] for r in cur.fetchall()]
        cur.execute(
            "SELECT u.user_id FROM shop.users u WHERE u.created_at < %s AND NOT EXISTS "
            "(SELECT 1 FROM shop.events e WHERE e.user_id = u.user_id AND e.ts < %s) ORDER BY u.user_id DESC LIMIT 1",
            (parse_as_of(args.as_of), parse_as_of(args.as_of)),
        )
        new = cur.fetchone()
        users = [(u, "returning user") for u in sample] + ([(new[0], "new user, no history")] if new else [])
        for uid, kind in users:
            cur.execute(
                "SELECT r.rank, r.item_id, i.title, i.category, r.score, r.reason FROM recsys.user_recommendations r "
                "JOIN shop.items i USING (item_id) WHERE r.user_id = %s ORDER BY r.rank LIMIT 10",
                (uid,),
            )
            t = Table(title=f"user {uid} ({kind}): top 10")
            for c in ["rank", "item", "title", "category", "score", "reason"]:
                t.add_column(c, overflow="fold")
            for r in cur.fetchall():
                t.add_row(str(r[0]), str(r[1]), str(r[2])[:38], str(r[3]), f"{r[4]:.4f}", r[5])
            console.print(t)
        cur.execute("SELECT count(*), count(DISTINCT user_id) FROM recsys.user_recommendations")
        rows, n_users = cur.fetchone()
    console.print(f"recsys.user_recommendations: {rows} rows for {n_users} users\n")
    console.print("A downstream reader (role rerank_reader) reads:", style="bold")
    console.print("  " + READ_SQL.format(uid=users[0][0] if users else 1), highlight=False)
    console.print('  e.g. psql "$(.venv/bin/rerank db url | tail -1)" -c "<the query above>"', highlight=False)


if __name__ == "__main__":
    main()
