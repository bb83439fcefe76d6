"""The pandas baseline of the validate benchmark (issue 7): a vectorised pass of format
checks + exact dedup + three anonymisation regexes over the same corpus.

    cargo run --release -p fleming-operators --example question_bench -- corpus 1000000 /tmp/corpus.parquet
    python3 operators/examples/validate_pandas.py /tmp/corpus.parquet
"""

import json
import re
import resource
import sys
import time

import pandas as pd


def main(path):
    df = pd.read_parquet(path, columns=["id", "question", "options", "answer"])
    n = len(df)
    t = time.perf_counter()
    # Format: option texts and labels as columns.
    texts = df["options"].map(lambda o: [x["text"] for x in o])
    labels = df["options"].map(lambda o: [x["label"] for x in o])
    n_opts = texts.str.len()
    norm_opts = texts.map(lambda ts: [" ".join(re.sub(r"[^\w]+", " ", x.lower()).split()) for x in ts])
    dup_opts = norm_opts.map(lambda ts: len(set(ts)) != len(ts))
    empty_opts = texts.map(lambda ts: any(not x.strip() for x in ts))
    bad_answer = [a not in ls for a, ls in zip(df["answer"], labels)]
    empty_q = df["question"].str.strip().str.len() < 10
    bad = empty_q | dup_opts | empty_opts | pd.Series(bad_answer) | (n_opts < 2) | (n_opts > 10)
    # Exact dedup on normalised text.
    norm = df["question"].str.lower().str.replace(r"[^\w]+", " ", regex=True).str.strip() + " | " + norm_opts.map(lambda ts: " | ".join(sorted(ts)))
    dup = norm.duplicated()
    keep = df[~bad & ~dup].copy()
    # Three regexes.
    q = keep["question"]
    q = q.str.replace(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", "[EMAIL]", regex=True)
    q = q.str.replace(r"(?:\(\d{3}\)\s?|\b\d{3}[\s.-])\d{3}[\s.-]\d{4}\b", "[PHONE]", regex=True)
    q = q.str.replace(r"\b\d{1,2}/\d{1,2}/(?:19|20)?\d{2}\b", "[DATE]", regex=True)
    keep["question"] = q
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"bench": "pandas: format + exact dedup + 3 regexes", "items": n, "seconds": round(secs, 3), "items_per_s": round(n / secs), "kept": len(keep), "peak_rss_mib": round(peak)}))


if __name__ == "__main__":
    main(sys.argv[1])
