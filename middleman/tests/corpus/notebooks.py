# Cells in the style of real analysis notebooks (data loading, cleaning, plots, models,
# helpers), one per "# %%" block, checked against Python's ast/symtable like edge_cases.py.
# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
# %%
from pathlib import Path
DATA_DIR = Path("data")
RAW = DATA_DIR / "raw.csv"
# %%
df = pd.read_csv(RAW, parse_dates=["date"])
df.head()
# %%
df.info()
df.describe(include="all")
# %%
missing = df.isna().sum().sort_values(ascending=False)
missing[missing > 0]
# %%
df = df.dropna(subset=["price"]).reset_index(drop=True)
# %%
df["month"] = df["date"].dt.to_period("M")
monthly = df.groupby("month")["price"].agg(["mean", "median", "count"])
monthly
# %%
fig, ax = plt.subplots(figsize=(10, 4))
monthly["mean"].plot(ax=ax, label="mean")
monthly["median"].plot(ax=ax, label="median")
ax.set_title("Price by month")
ax.legend()
plt.show()
# %%
def zscore(series):
    mu, sigma = series.mean(), series.std()
    return (series - mu) / sigma
# %%
df["price_z"] = zscore(df["price"])
outliers = df[np.abs(df["price_z"]) > 3]
len(outliers)
# %%
THRESHOLD = 3.0
clean = df[np.abs(df["price_z"]) <= THRESHOLD].copy()
# %%
categories = sorted(clean["category"].unique())
print(f"{len(categories)} categories: {', '.join(categories[:5])}...")
# %%
counts = {c: int((clean["category"] == c).sum()) for c in categories}
top = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:10]
top
# %%
pivot = clean.pivot_table(index="category", columns="month", values="price", aggfunc="mean")
pivot.style.background_gradient(cmap="viridis")
# %%
from sklearn.model_selection import train_test_split
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, r2_score
# %%
features = ["size", "rooms", "age"]
X = clean[features].values
y = clean["price"].values
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
# %%
model = LinearRegression()
model.fit(X_train, y_train)
pred = model.predict(X_test)
print("MAE", mean_absolute_error(y_test, pred), "R2", r2_score(y_test, pred))
# %%
coef = pd.Series(model.coef_, index=features).sort_values()
coef.plot.barh()
# %%
residuals = y_test - pred
plt.hist(residuals, bins=40)
plt.axvline(0, color="k")
# %%
import json
with open(DATA_DIR / "config.json") as fh:
    config = json.load(fh)
config.get("version", "unknown")
# %%
def load_all(directory, pattern="*.csv"):
    frames = []
    for path in sorted(directory.glob(pattern)):
        frame = pd.read_csv(path)
        frame["source"] = path.stem
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
# %%
combined = load_all(DATA_DIR)
combined.shape
# %%
class RunningStats:
    """Welford's online mean and variance."""

    def __init__(self):
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def push(self, value):
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    @property
    def variance(self):
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0
# %%
stats = RunningStats()
for v in clean["price"]:
    stats.push(v)
stats.mean, stats.variance
# %%
import re
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
emails = [m.group(0) for text in clean["notes"].fillna("") for m in EMAIL.finditer(text)]
len(emails)
# %%
from collections import Counter
domains = Counter(e.split("@")[1].lower() for e in emails)
domains.most_common(5)
# %%
import itertools
pairs = list(itertools.combinations(categories, 2))
n_pairs = len(pairs)
# %%
def bootstrap(values, stat=np.mean, n=1000, seed=0):
    rng = np.random.default_rng(seed)
    samples = rng.choice(values, size=(n, len(values)), replace=True)
    return np.apply_along_axis(stat, 1, samples)
# %%
boot = bootstrap(clean["price"].values)
lo, hi = np.percentile(boot, [2.5, 97.5])
print(f"95% CI: [{lo:.2f}, {hi:.2f}]")
# %%
%matplotlib inline
# %%
import seaborn as sns
sns.set_theme(style="whitegrid")
sns.boxplot(data=clean, x="category", y="price")
# %%
corr = clean[features + ["price"]].corr()
sns.heatmap(corr, annot=True, fmt=".2f")
# %%
def summarize(frame, by, value="price"):
    grouped = frame.groupby(by)[value]
    return pd.DataFrame({"n": grouped.size(), "mean": grouped.mean(), "std": grouped.std()})
# %%
summary = summarize(clean, "category")
summary.sort_values("mean", ascending=False).head(10)
# %%
import datetime as dt
today = dt.date.today()
recent = clean[clean["date"] >= pd.Timestamp(today - dt.timedelta(days=90))]
# %%
weekly = recent.set_index("date").resample("W")["price"].mean()
weekly.plot(marker="o")
# %%
try:
    from tqdm.auto import tqdm
except ImportError:
    def tqdm(it, **kwargs):
        return it
# %%
results = []
for seed in tqdm(range(20)):
    boot_s = bootstrap(clean["price"].values, n=200, seed=seed)
    results.append(boot_s.mean())
np.std(results)
# %%
import requests
response = requests.get(API_URL, params={"limit": 100}, timeout=10)
response.raise_for_status()
payload = response.json()
# %%
records = [
    {"id": item["id"], "name": item.get("name", ""), "score": float(item["score"])}
    for item in payload["items"]
    if item.get("active")
]
scores = pd.DataFrame.from_records(records)
# %%
scores["rank"] = scores["score"].rank(ascending=False, method="dense").astype(int)
scores.nsmallest(10, "rank")
# %%
def normalize_name(name: str) -> str:
    return " ".join(part.capitalize() for part in name.split())
# %%
scores["name"] = scores["name"].map(normalize_name)
# %%
merged = scores.merge(summary, left_on="name", right_index=True, how="left")
merged.isna().mean()
# %%
import sqlite3
conn = sqlite3.connect(":memory:")
clean.to_sql("clean", conn, index=False)
query = "SELECT category, AVG(price) AS avg_price FROM clean GROUP BY category"
from_sql = pd.read_sql(query, conn)
# %%
assert len(from_sql) == len(categories), "every category appears once"
# %%
from functools import lru_cache

@lru_cache(maxsize=None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
# %%
[fib(i) for i in range(20)]
# %%
import os
API_KEY = os.environ.get("API_KEY", "")
headers = {"Authorization": f"Bearer {API_KEY}"} if API_KEY else {}
# %%
from dataclasses import dataclass, field

@dataclass
class Experiment:
    name: str
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def record(self, key, value):
        self.metrics[key] = value
# %%
exp = Experiment("baseline", params={"features": features})
exp.record("mae", mean_absolute_error(y_test, pred))
exp
# %%
experiments = [exp]
for alpha in [0.1, 1.0, 10.0]:
    from sklearn.linear_model import Ridge
    ridge = Ridge(alpha=alpha).fit(X_train, y_train)
    e = Experiment(f"ridge-{alpha}", params={"alpha": alpha})
    e.record("mae", mean_absolute_error(y_test, ridge.predict(X_test)))
    experiments.append(e)
# %%
pd.DataFrame([{"name": e.name, **e.metrics} for e in experiments]).sort_values("mae")
# %%
best = min(experiments, key=lambda e: e.metrics["mae"])
best.name
# %%
def plot_predictions(actual, predicted, ax=None, title=None):
    ax = ax or plt.gca()
    ax.scatter(actual, predicted, alpha=0.3)
    limits = [min(actual.min(), predicted.min()), max(actual.max(), predicted.max())]
    ax.plot(limits, limits, "r--")
    if title:
        ax.set_title(title)
    return ax
# %%
plot_predictions(y_test, pred, title="Linear model")
# %%
with pd.option_context("display.max_rows", 20, "display.float_format", "{:.2f}".format):
    display(clean.sample(20, random_state=1))
# %%
mask = (clean["rooms"] >= 2) & (clean["size"].between(40, 120))
subset = clean.loc[mask, features + ["price"]]
subset.describe()
# %%
subset.to_parquet(DATA_DIR / "subset.parquet")
# %%
import asyncio

async def fetch_one(session, url):
    async with session.get(url) as resp:
        return await resp.text()
# %%
import aiohttp
async with aiohttp.ClientSession() as session:
    pages = await asyncio.gather(*(fetch_one(session, u) for u in urls))
len(pages)
# %%
lengths = list(map(len, pages))
avg_len = sum(lengths) / len(lengths)
# %%
def chunks(seq, size):
    for start in range(0, len(seq), size):
        yield seq[start:start + size]
# %%
batches = list(chunks(list(range(103)), 10))
len(batches), len(batches[-1])
# %%
import logging
logging.basicConfig(level=logging.INFO)
log = logging.getLogger("notebook")
log.info("loaded %d rows", len(clean))
# %%
totals = {}
for row in clean.itertuples():
    totals[row.category] = totals.get(row.category, 0) + row.price
# %%
grand_total = sum(totals.values())
shares = {k: v / grand_total for k, v in totals.items()}
# %%
if shares:
    largest = max(shares, key=shares.get)
    print(f"largest share: {largest} ({shares[largest]:.1%})")
# %%
np.random.seed(0)
sim = np.cumsum(np.random.randn(1000))
plt.plot(sim)
# %%
window = 50
rolling = pd.Series(sim).rolling(window).mean()
plt.plot(rolling)
# %%
def describe_array(a, *, decimals=2):
    return {name: round(float(fn(a)), decimals) for name, fn in [("min", np.min), ("max", np.max), ("mean", np.mean)]}
# %%
describe_array(sim)
# %%
match config.get("mode"):
    case "fast":
        n_iter = 10
    case "full":
        n_iter = 1000
    case _:
        n_iter = 100
# %%
history = []
for it in range(n_iter):
    history.append(it ** 0.5)
history[-1]
# %%
del conn
# %%
print("done")
