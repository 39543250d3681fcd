-- The read contract for downstream SQL (ARCHITECTURE.md, "Output contract").
-- {recs_table} is the live run's table and {generated_at} the oldest generation time of its rows (a
-- user-subset run republishes the other users' live rows as they were); publish/ fills both with
-- psycopg2.sql (identifier and literal) and swaps the view in one short transaction.
-- A user's near-real-time rows newer than that user's own nightly rows replace the whole list; at read
-- time the view drops items gone out of stock or invisible and items the user bought after the row was
-- generated.
CREATE OR REPLACE VIEW recsys.user_recommendations AS
SELECT r.user_id, r.rank, r.item_id, r.score, r.reason, r.anchor_item_id, r.source, r.variant,
       r.model_version, r.run_id, r.generated_at
FROM (
    SELECT n.user_id, n.rank, n.item_id, n.score, n.reason, n.anchor_item_id, n.source, n.variant,
           n.model_version, n.run_id, n.generated_at
    FROM {recs_table} n
    WHERE NOT EXISTS (
        SELECT 1 FROM recsys.recs_realtime rt
        WHERE rt.user_id = n.user_id AND rt.generated_at > n.generated_at
    )
    UNION ALL
    SELECT rt.user_id, rt.rank, rt.item_id, rt.score, rt.reason, rt.anchor_item_id, rt.source, rt.variant,
           rt.model_version, rt.run_id, rt.generated_at
    FROM recsys.recs_realtime rt
    WHERE rt.generated_at > {generated_at}
      AND NOT EXISTS (
        SELECT 1 FROM {recs_table} n
        WHERE n.user_id = rt.user_id AND n.generated_at >= rt.generated_at
    )
) r
JOIN shop.items i ON i.item_id = r.item_id AND i.in_stock AND i.visible
WHERE NOT EXISTS (
    SELECT 1 FROM shop.events e
    WHERE e.user_id = r.user_id AND e.item_id = r.item_id
      AND e.event_type = 'purchase' AND e.ts >= r.generated_at
);
