-- "Similar items" read for item pages; {similar_table} is the live run's neighbour table.
CREATE OR REPLACE VIEW recsys.similar_items AS
SELECT s.item_id, s.rank, s.similar_item_id, s.score, s.method
FROM {similar_table} s
JOIN shop.items i ON i.item_id = s.similar_item_id AND i.in_stock AND i.visible;
