-- The A/B readout's read views (issue 25). Exposure comes from shop.impressions: a user is exposed on a
-- (UTC) day when the day holds at least one impression for them, and belongs to the arm (``variant``) of
-- those impressions (the smallest name when a day shows several: ``arms`` > 1 flags it). Outcomes count the
-- user's events that day at or after their first impression: clicks on items shown to them that day (CTR
-- = clicked shown items / impressions), any add_to_cart, any purchase, and revenue = quantity * price of
-- the purchases (the item's current price: the shop keeps no price history).
CREATE OR REPLACE VIEW recsys.ab_user_daily AS
WITH exposure AS (
    SELECT user_id, (ts AT TIME ZONE 'UTC')::date AS day, min(variant) AS variant,
           count(DISTINCT variant) AS arms, count(*) AS impressions, min(ts) AS first_ts
    FROM shop.impressions
    GROUP BY 1, 2
), shown AS (
    SELECT DISTINCT user_id, item_id, (ts AT TIME ZONE 'UTC')::date AS day FROM shop.impressions
), acts AS (
    SELECT x.user_id, x.day,
           count(DISTINCT e.item_id) FILTER (WHERE e.event_type = 'click' AND s.item_id IS NOT NULL) AS clicked_items,
           bool_or(e.event_type = 'add_to_cart') AS carted,
           bool_or(e.event_type = 'purchase') AS purchased,
           coalesce(sum(e.quantity * coalesce(i.price, 0)) FILTER (WHERE e.event_type = 'purchase'), 0) AS revenue
    FROM exposure x
    JOIN shop.events e
      ON e.user_id = x.user_id AND e.ts >= x.first_ts
     AND e.ts < ((x.day + 1)::timestamp AT TIME ZONE 'UTC')
     AND e.event_type IN ('click', 'add_to_cart', 'purchase')
    LEFT JOIN shown s ON s.user_id = e.user_id AND s.item_id = e.item_id AND s.day = x.day
    LEFT JOIN shop.items i ON i.item_id = e.item_id
    GROUP BY 1, 2
)
SELECT x.day, x.variant, x.user_id, x.arms, x.impressions,
       coalesce(a.clicked_items, 0) AS clicked_items,
       coalesce(a.carted, false) AS carted,
       coalesce(a.purchased, false) AS purchased,
       coalesce(a.revenue, 0)::double precision AS revenue
FROM exposure x
LEFT JOIN acts a USING (user_id, day);

CREATE OR REPLACE VIEW recsys.ab_daily AS
SELECT day, variant,
       count(*) AS exposed_users,
       sum(impressions)::bigint AS impressions,
       sum(clicked_items)::bigint AS clicks,
       sum(clicked_items)::double precision / nullif(sum(impressions), 0) AS ctr,
       avg(carted::int)::double precision AS add_to_cart_rate,
       avg(purchased::int)::double precision AS conversion,
       sum(revenue) AS revenue,
       sum(revenue) / count(*) AS revenue_per_user,
       count(*) FILTER (WHERE arms > 1) AS users_in_several_arms
FROM recsys.ab_user_daily
GROUP BY day, variant;
