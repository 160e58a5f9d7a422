"""Warm the embedding cache with every prompt in ../shared/data (bootstrap helper)."""
import ast, csv, glob, json, sys, time
from switchllm.embeddings import get_embedder
csv.field_size_limit(10**9)
D = sys.argv[1]
texts = []
for f in sorted(glob.glob(f"{D}/routellm/mt_bench/question.jsonl")):
    for line in open(f):
        q = json.loads(line); texts += q["turns"][:1]
for line in open(f"{D}/arena-hard-v1/scores.jsonl"):
    texts.append(json.loads(line)["prompt"])
for f in sorted(glob.glob(f"{D}/routerbench/*.csv")):
    for row in csv.DictReader(open(f)):
        p = row["prompt"]
        try:
            v = ast.literal_eval(p); p = v[0] if isinstance(v, list) and len(v) == 1 else p
        except Exception:
            pass
        texts.append(p)
for row in csv.DictReader(open(f"{D}/routellm/gsm8k/gsm8k_responses.csv")):
    texts.append(row["prompt"])
for f in ("train", "test"):
    texts += [d["question"] for d in json.load(open(f"{D}/llmrouter/{f}.json"))]
for f in sorted(glob.glob(f"{D}/routellm/mmlu/responses/*.csv")):
    texts += [row["prompt"] for row in csv.DictReader(open(f))]
print(len(texts), "texts", flush=True)
emb = get_embedder()
t = time.time()
for i in range(0, len(texts), 2000):
    emb.embed(texts[i:i+2000])
    print(i + 2000, f"{time.time()-t:.0f}s", flush=True)
