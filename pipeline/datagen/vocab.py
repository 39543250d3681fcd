"""The fixed vocabulary of the synthetic shop: a three-level category tree and per-category words.

Kept as plain data so that the catalogue's *structure* never depends on the seed or the shop size; the seed
only decides weights, brands, prices and which words an item gets. Each leaf carries an English and a
Chinese noun (a share of titles is written in Chinese); each top category carries its adjectives, feature
phrases and a median price, from which the leaves' log-normal price distributions are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

#: top -> mid -> [(leaf, English noun, Chinese noun)]
TREE: dict[str, dict[str, list[tuple[str, str, str]]]] = {
    "Home": {
        "Kitchen": [("Knives", "Chef Knife", "厨师刀"), ("Cookware", "Frying Pan", "平底锅"),
                    ("Coffee Makers", "Coffee Maker", "咖啡机"), ("Storage", "Storage Jar", "收纳罐")],
        "Bedding": [("Pillows", "Pillow", "枕头"), ("Duvets", "Duvet", "羽绒被"),
                    ("Sheets", "Sheet Set", "床单")],
        "Lighting": [("Desk Lamps", "Desk Lamp", "台灯"), ("Ceiling Lights", "Ceiling Light", "吸顶灯"),
                     ("Smart Bulbs", "Smart Bulb", "智能灯泡")],
    },
    "Electronics": {
        "Phones": [("Smartphones", "Smartphone", "手机"), ("Cases", "Phone Case", "手机壳"),
                   ("Chargers", "Charger", "充电器")],
        "Audio": [("Headphones", "Headphones", "头戴耳机"), ("Speakers", "Speaker", "音箱"),
                  ("Earbuds", "Earbuds", "蓝牙耳机")],
        "Computers": [("Laptops", "Laptop", "笔记本电脑"), ("Keyboards", "Keyboard", "键盘"),
                      ("Monitors", "Monitor", "显示器"), ("Mice", "Mouse", "鼠标")],
    },
    "Fashion": {
        "Women": [("Dresses", "Dress", "连衣裙"), ("Handbags", "Handbag", "手提包"),
                  ("Scarves", "Scarf", "围巾")],
        "Men": [("Shirts", "Shirt", "衬衫"), ("Jackets", "Jacket", "夹克"), ("Watches", "Watch", "手表")],
        "Shoes": [("Sneakers", "Sneakers", "运动鞋"), ("Boots", "Boots", "靴子"),
                  ("Sandals", "Sandals", "凉鞋")],
    },
    "Beauty": {
        "Skincare": [("Moisturizers", "Moisturizer", "面霜"), ("Serums", "Serum", "精华液"),
                     ("Sunscreen", "Sunscreen", "防晒霜")],
        "Makeup": [("Lipstick", "Lipstick", "口红"), ("Mascara", "Mascara", "睫毛膏"),
                   ("Foundation", "Foundation", "粉底液")],
        "Hair": [("Shampoo", "Shampoo", "洗发水"), ("Hair Dryers", "Hair Dryer", "吹风机")],
    },
    "Sports": {
        "Fitness": [("Yoga Mats", "Yoga Mat", "瑜伽垫"), ("Dumbbells", "Dumbbell", "哑铃"),
                    ("Resistance Bands", "Resistance Band", "弹力带")],
        "Outdoor": [("Tents", "Tent", "帐篷"), ("Backpacks", "Backpack", "背包"),
                    ("Sleeping Bags", "Sleeping Bag", "睡袋")],
        "Cycling": [("Bikes", "Bike", "自行车"), ("Helmets", "Helmet", "头盔"),
                    ("Bike Lights", "Bike Light", "车灯")],
    },
    "Toys": {
        "Building": [("Blocks", "Building Blocks", "积木"), ("Model Kits", "Model Kit", "拼装模型")],
        "Games": [("Board Games", "Board Game", "桌游"), ("Puzzles", "Puzzle", "拼图")],
        "Baby": [("Plush Toys", "Plush Toy", "毛绒玩具"), ("Rattles", "Rattle", "摇铃")],
    },
    "Books": {
        "Fiction": [("Mystery", "Mystery Novel", "推理小说"), ("Science Fiction", "Sci-Fi Novel", "科幻小说"),
                    ("Romance", "Romance Novel", "言情小说")],
        "Non-fiction": [("Cookbooks", "Cookbook", "菜谱"), ("Biographies", "Biography", "传记"),
                        ("History", "History Book", "历史书")],
        "Children": [("Picture Books", "Picture Book", "绘本"),
                     ("Early Readers", "Early Reader", "儿童读物")],
    },
    "Grocery": {
        "Beverages": [("Tea", "Green Tea", "绿茶"), ("Coffee Beans", "Coffee Beans", "咖啡豆"),
                      ("Juice", "Orange Juice", "橙汁")],
        "Snacks": [("Chocolate", "Chocolate Bar", "巧克力"), ("Nuts", "Mixed Nuts", "坚果"),
                   ("Chips", "Potato Chips", "薯片")],
        "Pantry": [("Olive Oil", "Olive Oil", "橄榄油"), ("Pasta", "Pasta", "意大利面"),
                   ("Spices", "Spice Mix", "香料")],
    },
}


@dataclass(frozen=True)
class TopWords:
    """Words and price level shared by every leaf under one top category."""

    adjectives: tuple[str, ...]
    adjectives_zh: tuple[str, ...]
    features: tuple[str, ...]
    features_zh: tuple[str, ...]
    median_price: float


TOP_WORDS: dict[str, TopWords] = {
    "Home": TopWords(
        ("Stainless", "Ceramic", "Nordic", "Compact", "Premium", "Classic", "Bamboo", "Cosy"),
        ("不锈钢", "陶瓷", "北欧风", "便携", "高级", "经典"),
        ("Dishwasher safe", "Easy to clean", "Made from recycled materials", "Two-year warranty",
         "Fits small apartments", "Designed in Denmark"),
        ("易清洗", "两年保修", "环保材料", "适合小户型"),
        40.0,
    ),
    "Electronics": TopWords(
        ("Wireless", "Smart", "Pro", "Ultra", "Noise-Cancelling", "Fast-Charging", "4K", "Portable"),
        ("无线", "智能", "专业版", "超薄", "降噪", "快充"),
        ("Bluetooth 5.3", "USB-C charging", "30-hour battery", "Works with voice assistants",
         "Aluminium body", "Two-year warranty"),
        ("蓝牙5.3", "超长续航", "USB-C接口", "铝合金机身"),
        120.0,
    ),
    "Fashion": TopWords(
        ("Slim-Fit", "Linen", "Leather", "Vintage", "Oversized", "Cotton", "Summer", "Waterproof"),
        ("修身", "亚麻", "真皮", "复古", "宽松", "纯棉"),
        ("Machine washable", "Ethically made", "Runs true to size", "Free returns", "Breathable fabric",
         "Limited edition"),
        ("可机洗", "透气面料", "限量版", "免费退换"),
        60.0,
    ),
    "Beauty": TopWords(
        ("Hydrating", "Organic", "Matte", "Long-Lasting", "Gentle", "Vitamin C", "SPF 50"),
        ("保湿", "有机", "哑光", "持久", "温和", "美白"),
        ("Dermatologically tested", "Vegan formula", "Fragrance free", "For all skin types",
         "Cruelty free"),
        ("敏感肌可用", "无香精", "纯素配方", "适合所有肤质"),
        20.0,
    ),
    "Sports": TopWords(
        ("Lightweight", "Foldable", "Non-Slip", "Adjustable", "Ultralight", "All-Weather"),
        ("轻量", "折叠", "防滑", "可调节", "超轻", "全天候"),
        ("Tested by athletes", "Sweat resistant", "Packs small", "Reflective details", "Lifetime warranty"),
        ("专业运动员测试", "防汗", "便于收纳", "终身保修"),
        50.0,
    ),
    "Toys": TopWords(
        ("Educational", "Colourful", "Wooden", "Magnetic", "Classic", "Giant"),
        ("益智", "彩色", "木制", "磁力", "经典", "大号"),
        ("Ages 3 and up", "Non-toxic paint", "Encourages creativity", "Batteries not required"),
        ("适合3岁以上", "环保涂料", "培养创造力"),
        25.0,
    ),
    "Books": TopWords(
        ("Bestselling", "Illustrated", "Hardcover", "Paperback", "Award-Winning", "Annotated"),
        ("畅销", "插图版", "精装", "平装", "获奖", "注释版"),
        ("New edition", "Signed by the author", "A book club favourite", "Includes reading guide"),
        ("全新版本", "作者签名", "读书会推荐"),
        15.0,
    ),
    "Grocery": TopWords(
        ("Organic", "Fair-Trade", "Dark", "Roasted", "Sea-Salt", "Family-Size"),
        ("有机", "公平贸易", "黑", "烘焙", "海盐", "家庭装"),
        ("Resealable pack", "No added sugar", "Sourced from small farms", "Best before 12 months"),
        ("无添加糖", "可重复密封", "小农场直供"),
        8.0,
    ),
}

#: Syllables brand names are built from (seeded, so brands differ by seed but read like brands).
BRAND_HEADS = ("Kor", "Vel", "Nord", "Lum", "Ast", "Bri", "Cal", "Dav", "Eko", "Fen", "Gal", "Hal", "Ixo",
               "Jun", "Kai", "Lor", "Mav", "Nim", "Orb", "Pax", "Quo", "Ros", "Sol", "Tav", "Ulm", "Vor",
               "Wen", "Xan", "Yor", "Zef")
BRAND_TAILS = ("a", "ex", "ia", "o", "is", "en", "ar", "ity", "on", "ux", "ora", "ik", "ell", "io", "um")

COLOURS = ("Black", "White", "Grey", "Navy", "Red", "Green", "Beige", "Blue")
COUNTRIES = ("DE", "FR", "GB", "US", "NL", "ES", "IT", "PL", "CN", "SE")
COUNTRY_WEIGHTS = (0.22, 0.14, 0.14, 0.12, 0.08, 0.08, 0.08, 0.06, 0.05, 0.03)
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_WEIGHTS = (0.62, 0.31, 0.07)
PRICE_LEVELS = ("low", "mid", "high")


def leaves() -> list[tuple[str, str, str, str]]:
    """Every leaf as ``(path, top, English noun, Chinese noun)`` in a fixed order."""
    out = []
    for top, mids in TREE.items():
        for mid, leafs in mids.items():
            for leaf, noun, noun_zh in leafs:
                out.append((f"{top}>{mid}>{leaf}", top, noun, noun_zh))
    return out
