"""A seeded corpus of hostile inputs for every reader and flag family of the ``servesim`` command.

Each case is a command line plus the files it reads. ``refuse`` cases must be refused (exit 2, one line on
stderr); the others may be served or refused, but never with a traceback or a hang. Values are drawn from
pools of what breaks readers: wrong types, signs and magnitudes, non-finite numbers, Unicode digits, huge
values, deep nesting, duplicate keys and columns, broken encodings.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

#: JSON texts (not Python values) that no count, size or time field may accept
BAD_JSON_NUMBERS = ["-1", "-0.5", "1.5", "\"12\"", "\"\\u0661\\u0662\"", "null", "true", "[]", "{}", "NaN",
                    "Infinity", "-Infinity", "1e999", str(2**64), "1" + "0" * 5000, "\"" + "x" * 5000 + "\""]
#: counts that exceed every bound servesim sets (tokens, layers, experts, replicas)
HUGE = [str(10**12), str(2**63), str(2**64), "1e300"]
#: cell texts that no CSV count may accept
BAD_CELLS = ["-1", "1.5", "abc", "", "\u0661\u0662", "\uff11\uff12", "nan", "inf", "1e999", str(10**30),
             "9" * 5000, "0x10"]
#: flag values that no numeric flag may accept
BAD_FLAG_VALUES = ["nan", "inf", "-inf", "-1", "1e999", "abc", "", "\u0661\u0662", "9" * 400]


@dataclass
class Case:
    """One hostile input: ``argv`` with ``{dir}`` standing for the case's folder, and the files to write there."""

    family: str
    what: str
    argv: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    refuse: bool = True
    #: a refusal must name this (a flag whose base command line would fail later anyway: the refusal must be its own)
    must_name: str | None = None


def _deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + close * depth


# ---- traces -----------------------------------------------------------------------------------------------

JSONL_BASE = {"request_id": "0", "arrival_time": 0.5, "prompt_tokens": 100, "output_tokens": 20}


def _jsonl_line(obj: dict, overrides: dict[str, str]) -> str:
    """``obj`` as JSON with some fields' values replaced by raw JSON texts."""
    parts = [f"{json.dumps(k)}: {overrides.get(k, json.dumps(v))}" for k, v in obj.items()]
    parts += [f"{json.dumps(k)}: {v}" for k, v in overrides.items() if k not in obj]
    return "{" + ", ".join(parts) + "}"


def _stats(name: str, fmt: str = "auto") -> list[str]:
    return ["trace", "stats", "{dir}/" + name, "--format", fmt, "--json"]


def trace_cases(rng: random.Random) -> Iterator[Case]:
    good = json.dumps(JSONL_BASE)
    for fld in ("arrival_time", "prompt_tokens", "output_tokens"):
        for bad in BAD_JSON_NUMBERS + HUGE:
            if fld == "arrival_time" and bad == "1.5":  # a valid time
                continue
            if fld != "arrival_time" and bad == str(10**12):  # a count within 2^53: unservable, not malformed
                continue
            line = _jsonl_line(JSONL_BASE, {fld: bad})
            lines = [good, line] if rng.random() < 0.5 else [line]
            yield Case("jsonl", f"{fld}={bad[:20]}", _stats("t.jsonl"), {"t.jsonl": "\n".join(lines).encode()})
    structural = {
        "missing prompt_tokens": '{"arrival_time": 0, "output_tokens": 3}',
        "array": "[1, 2, 3]", "number": "42", "string": '"req"', "trailing garbage": good + " x",
        "duplicate key": '{"arrival_time": 0, "prompt_tokens": 5, "prompt_tokens": 6, "output_tokens": 3}',
        "deep extra field": _jsonl_line(JSONL_BASE, {"meta": _deep(200_000)}),
        "deep extra object": _jsonl_line(JSONL_BASE, {"meta": '{"a":' * 50_000 + "1" + "}" * 50_000}),
        "hash_ids null": _jsonl_line(JSONL_BASE, {"hash_ids": "null", "hash_block_size": "16"}),
        "hash_ids huge id": _jsonl_line(JSONL_BASE, {"hash_ids": f"[{2**63}]", "hash_block_size": "16"}),
        "hash_ids negative": _jsonl_line(JSONL_BASE, {"hash_ids": "[-1]", "hash_block_size": "16"}),
        "hash_ids float": _jsonl_line(JSONL_BASE, {"hash_ids": "[1.5]", "hash_block_size": "16"}),
        "hash_ids longer than prompt": _jsonl_line(JSONL_BASE, {"hash_ids": json.dumps(list(range(50))),
                                                                 "hash_block_size": "16"}),
        "prefix_len above prompt": _jsonl_line(JSONL_BASE, {"prefix_group": '"a"', "prefix_len": "5000"}),
        "prefix_len without group": _jsonl_line(JSONL_BASE, {"prefix_len": "50"}),
    }
    for what, line in structural.items():
        yield Case("jsonl", what, _stats("t.jsonl"), {"t.jsonl": (good + "\n" + line + "\n").encode()})
    for what, data in {"empty": b"", "blank lines": b"\n\n\n", "bad utf-8": good.encode() + b"\n\xff\xfe{}\n",
                       "NUL byte": good.encode() + b"\n\x00\n", "latin-1 field": b'{"request_id": "\xe9"}\n'}.items():
        yield Case("jsonl", what, _stats("t.jsonl"), {"t.jsonl": data})
    # served or refused, never a crash: a lone CR between lines, huge prompts with hash ids (memory must follow
    # the hash ids, not the tokens)
    yield Case("jsonl", "CR-only line ends", _stats("t.jsonl"), {"t.jsonl": f"{good}\r{good}\r".encode()},
               refuse=False)
    for tokens in (10**9, 2**40):
        moon = json.dumps({"timestamp": 0, "input_length": tokens, "output_length": 5, "hash_ids": [1, 2, 3]})
        yield Case("mooncake", f"{tokens} tokens, 3 hash ids", _stats("m.jsonl", "mooncake"),
                   {"m.jsonl": moon.encode()}, refuse=False)

    moon_base = {"timestamp": 0, "input_length": 1024, "output_length": 20, "hash_ids": [0, 1]}
    for fld in ("timestamp", "input_length", "output_length", "hash_ids"):
        pool = BAD_JSON_NUMBERS + HUGE if fld != "hash_ids" else [
            "null", "\"abc\"", "[1.5]", "[-1]", f"[{2**63}]", "[true]", "[[1]]", "{}", "7", "[NaN]",
            json.dumps(list(range(100)))]
        for bad in pool:
            if fld == "timestamp" and bad in ("1.5", str(10**12)):
                continue  # ms timestamps: 1e12 ms is a real epoch clock, 1.5 ms a real time
            if fld in ("input_length", "output_length") and bad == str(10**12):
                continue  # a count within 2^53: unservable, not malformed
            line = _jsonl_line(moon_base, {fld: bad})
            yield Case("mooncake", f"{fld}={bad[:20]}", _stats("m.jsonl", "mooncake"), {"m.jsonl": line.encode()})

    csv_formats = {
        "azure": ("TIMESTAMP,ContextTokens,GeneratedTokens", ["2023-11-16 18:15:46.680590", "374", "44"]),
        "burstgpt": ("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type",
                     ["5", "ChatGPT", "472", "18", "490", "Conversation log"]),
        "splitwise": ("arrival_timestamp,prompt_size,token_size", ["0.1", "100", "20"]),
        "lengths": ("num_prefill_tokens,num_decode_tokens", ["100", "20"]),
    }
    count_columns = {"azure": (1, 2), "burstgpt": (2, 3), "splitwise": (1, 2), "lengths": (0, 1)}
    for fmt, (header, row) in csv_formats.items():
        ok = ",".join(row)
        for col in count_columns[fmt]:
            for cell in BAD_CELLS:
                bad = list(row)
                bad[col] = cell
                yield Case(fmt, f"col {col}={cell[:12]}", _stats("t.csv", fmt),
                           {"t.csv": f"{header}\n{ok}\n{','.join(bad)}\n".encode()})
        first = header.split(",")[0]
        for what, text in {"duplicated column": f"{header},{header.split(',')[1]}\n{ok},{row[1]}\n",
                           "missing column": f"{first}\n{row[0]}\n", "extra cell": f"{header}\n{ok},7\n",
                           "short row": f"{header}\n{row[0]}\n", "header only": f"{header}\n",
                           "control char in header": f"{header}\x07\n{ok}\n",
                           "NUL in row": f"{header}\n{ok}\x00\n"}.items():
            yield Case(fmt, what, _stats("t.csv", fmt), {"t.csv": text.encode()})


# ---- model configs ----------------------------------------------------------------------------------------

HF_BASE = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
           "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048}
MOE_BASE = {**HF_BASE, "model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2}


def _cost(path: str) -> list[str]:
    return ["cost", "--model", "{dir}/" + path, "--prefill", "64", "--decodes", "2", "--decode-context", "100",
            "--json"]


def config_cases(rng: random.Random) -> Iterator[Case]:
    for base, fields in ((HF_BASE, list(HF_BASE)[1:]), (MOE_BASE, ["num_local_experts", "num_experts_per_tok"])):
        for fld in fields:
            for bad in ["0"] + BAD_JSON_NUMBERS + HUGE:
                if bad == "null" and fld == "num_key_value_heads":  # Hugging Face's default: as many as heads
                    continue
                text = "{" + ", ".join(f"{json.dumps(k)}: {bad if k == fld else json.dumps(v)}"
                                       for k, v in base.items()) + "}"
                yield Case("hf-config", f"{base['model_type']} {fld}={bad[:20]}", _cost("c.json"),
                           {"c.json": text.encode()})
    others = {
        "tie_word_embeddings string": {**HF_BASE, "tie_word_embeddings": "no"},
        "tie_word_embeddings number": {**HF_BASE, "tie_word_embeddings": 1},
        "quant_method list": {**HF_BASE, "quantization_config": {"quant_method": ["fp8"]}},
        "quant_method number": {**HF_BASE, "quantization_config": {"quant_method": 8}},
        "quantization_config list": {**HF_BASE, "quantization_config": ["fp8"]},
        "model_type number": {**HF_BASE, "model_type": 7},
        "model_type list": {**HF_BASE, "model_type": ["llama"]},
        "heads do not divide hidden": {**HF_BASE, "num_attention_heads": 3},
        "kv heads do not divide heads": {**HF_BASE, "num_key_value_heads": 3},
        "kv heads above heads": {**HF_BASE, "num_key_value_heads": 8},
        "experts per token above experts": {**MOE_BASE, "num_experts_per_tok": 9},
        "a billion experts": {**MOE_BASE, "num_local_experts": 10**9},
        "rope_scaling string": {**HF_BASE, "rope_scaling": "linear"},
    }
    for what, cfg in others.items():
        yield Case("hf-config", what, _cost("c.json"), {"c.json": json.dumps(cfg).encode()})
    for what, text in {"deep": _deep(200_000), "deep object": '{"a":' * 100_000 + "1" + "}" * 100_000,
                       "duplicate key": json.dumps(HF_BASE)[:-1] + ', "hidden_size": 512}',
                       "not an object": "[1, 2]", "empty": "", "truncated": json.dumps(HF_BASE)[:40],
                       "NaN": json.dumps({**HF_BASE, "hidden_size": float("nan")})}.items():
        yield Case("hf-config", what, _cost("c.json"), {"c.json": text.encode()})


# ---- deployment files ---------------------------------------------------------------------------------------

def _deploy(name: str) -> list[str]:
    return ["simulate", "--deployment", "{dir}/" + name, "-n", "4", "--out", "{dir}/run", "-q"]


def deployment_cases(rng: random.Random) -> Iterator[Case]:
    base = {"model": "tiny", "gpu": "a100-80gb", "scheduler": "sarathi", "replicas": 1, "tp": 1, "pp": 1,
            "token_budget": 256}
    numeric = ["replicas", "tp", "pp", "token_budget"]
    for fld in numeric:
        for bad in ["0", "-1", "1.5", '"two"', "null", "[]", "{}", ".nan", ".inf"] + HUGE:
            if bad == "null" and fld == "token_budget":  # the scheduler's default budget
                continue
            yaml_text = "\n".join(f"{k}: {bad if k == fld else json.dumps(v)}" for k, v in base.items())
            yield Case("deployment-yaml", f"{fld}={bad[:20]}", _deploy("d.yaml"), {"d.yaml": yaml_text.encode()})
        for bad in ["0", "-1", "1.5", '"two"', "[]", "nan", "inf", str(2**63 - 1)]:
            toml_text = "\n".join(f"{k} = {bad if k == fld else json.dumps(v)}" for k, v in base.items())
            yield Case("deployment-toml", f"{fld}={bad[:20]}", _deploy("d.toml"), {"d.toml": toml_text.encode()})
    many = "\n".join(f"key{i}: {i}" for i in range(30_000))
    texts = {
        "unknown key": "model: tiny\nsheduler: vllm\n", "duplicate key": "model: tiny\nmodel: tiny\n",
        "30,000 keys": "model: tiny\n" + many, "python tag": "model: !!python/object/apply:os.system ['true']\n",
        "deep": "model: tiny\nx: " + _deep(100_000) + "\n", "alias bomb": "a: &a [x, x, x, x, x, x, x, x]\n"
        + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 8)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        "recursive alias": "model: tiny\nx: &x [*x]\n", "not a mapping": "- tiny\n- vllm\n", "empty": "",
        "unknown mode": "model: tiny\nmode: sideways\n", "unknown model": "model: no-such-model\n",
        "huge value": "model: " + "x" * 5_000_000 + "\n",
        "pool without replicas field type": "model: tiny\nmode: disaggregated\nprefill: 3\ndecode: {replicas: 1}\n",
    }
    for what, text in texts.items():
        yield Case("deployment-yaml", what, _deploy("d.yaml"), {"d.yaml": text.encode()})
    from tests.fuzz_corpus_review import SPEC_BAD, SPEC_OK
    v1 = "model: tiny\nscheduler: vllm_v1\n"
    spec = "speculative_config: '" + SPEC_OK + "'\n"
    for what, text in {
            **{f"speculative_config={v}": f"{v1}speculative_config: {v}\n" for v in
               ("'{'", "'[]'", "7", "[1]", ".nan", "true", "'x'", "'" + SPEC_BAD[7] + "'")},
            **{f"spec_acceptance={v}": f"{v1}{spec}spec_acceptance: {v}\n" for v in
               (".nan", "-1", "1.5", "'abc'", "[0.5, .nan]", "{a: 1}", "'0.5,x'")},
            "spec_acceptance without speculative_config": f"{v1}spec_acceptance: '0.5'\n",
            "speculative_config with disaggregated pools": "model: tiny\nmode: disaggregated\n" + spec
            + "prefill: {replicas: 1}\ndecode: {replicas: 1}\n",
            **{f"kv_reservation={v}": f"model: tiny\nscheduler: orca\nkv_reservation: {v}\n" for v in
               ("bogus", "1", "[]", "null")},
            **{f"virtual_engines={v}": f"model: tiny\nscheduler: vllm\npp: 2\nvirtual_engines: {v}\n" for v in
               ("'yes'", "2", "[]", ".nan")},
            "virtual_engines on sarathi": "model: tiny\nscheduler: sarathi\npp: 2\nvirtual_engines: true\n"}.items():
        yield Case("deployment-yaml", what, _deploy("d.yaml"), {"d.yaml": text.encode()})
    for what, text in {"deep": "x = " + _deep(100_000) + "\n", "duplicate key": 'model = "tiny"\nmodel = "tiny"\n',
                       "bad syntax": "model = \n", "unknown key": 'model = "tiny"\nsheduler = "vllm"\n'}.items():
        yield Case("deployment-toml", what, _deploy("d.toml"), {"d.toml": text.encode()})


# ---- price files and profiles --------------------------------------------------------------------------------

PLAN_FAST = ["plan", "--model", "tiny", "--gpus", "a100-80gb", "--max-gpus", "1", "--schedulers", "vllm",
             "--budgets", "512", "-n", "10", "--duration", "0", "--seeds", "1", "--jobs", "1", "-q",
             "--out", "{dir}/plan"]


def price_cases(rng: random.Random) -> Iterator[Case]:
    for bad in (b for b in BAD_JSON_NUMBERS if b != "1.5"):  # USD 1.5 per GPU-hour is a price
        yield Case("prices", f"price={bad[:20]}", [*PLAN_FAST, "--prices", "{dir}/p.json"],
                   {"p.json": ('{"a100-80gb": ' + bad + "}").encode()})
    for what, text in {"duplicate key": '{"a100-80gb": 1.0, "a100-80gb": 2.0}', "unknown gpu": '{"z9000": 1}',
                       "deep": _deep(200_000), "list": "[1.0]", "empty": ""}.items():
        yield Case("prices", what, [*PLAN_FAST, "--prices", "{dir}/p.json"], {"p.json": text.encode()})


def profile_cases(rng: random.Random, profile_json: dict, measurements: str) -> Iterator[Case]:
    argv = ["simulate", "--model", "tiny", "--profile", "{dir}/prof", "-n", "4", "--out", "{dir}/run", "-q"]
    csv_text = measurements.encode()
    for fld in ("block_size", "format_version", "dtype_bytes"):
        for bad in [0, -16, 1e300, 999 if fld == "format_version" else "16", None, [16]]:
            meta = {**profile_json, fld: bad}
            yield Case("profile", f"{fld}={bad!r}"[:40], argv,
                       {"prof/profile.json": json.dumps(meta).encode(), "prof/measurements.csv": csv_text})
    header, *rows = measurements.splitlines()
    cols = header.split(",")
    for col in ("tokens", "seqs", "context", "median_s"):
        i = cols.index(col)
        for cell in ["0" if col == "median_s" else "-1", "-1", "nan", "inf", "abc", "", "\u0661"]:
            k = rng.randrange(len(rows))
            cells = rows[k].split(",")
            cells[i] = cell
            bad_rows = rows[:k] + [",".join(cells)] + rows[k + 1:]
            yield Case("profile", f"row {k + 2} {col}={cell}", argv,
                       {"prof/profile.json": json.dumps(profile_json).encode(),
                        "prof/measurements.csv": "\n".join([header, *bad_rows]).encode() + b"\n"})
    yield Case("profile", "profile.json not an object", argv,
               {"prof/profile.json": b"[]", "prof/measurements.csv": csv_text})
    yield Case("profile", "no measurements.csv", argv, {"prof/profile.json": json.dumps(profile_json).encode()})


# ---- numeric flags ---------------------------------------------------------------------------------------------

#: a fast base command line per subcommand, so that a wrongly accepted value costs a second, not a minute
FLAG_BASES: dict[str, list[str]] = {
    "simulate": ["simulate", "--model", "tiny", "-n", "4", "--out", "{dir}/run", "-q"],
    "cost": ["cost", "--model", "tiny", "--prefill", "16"],
    "capacity": ["capacity", "--model", "tiny", "-n", "10", "--duration", "0", "--seeds", "1", "-q"],
    "plan": PLAN_FAST,
    "trace generate": ["trace", "generate", "-n", "4", "--out", "{dir}/g.jsonl"],
}
#: flags that take names, paths or specs rather than numbers
NOT_NUMERIC = {"--out", "--trace", "--model", "--gpu", "--gpus", "--scheduler", "--schedulers", "--profile",
               "--deployment", "--prices", "--replay", "--lengths-from", "--prompt-len", "--output-len",
               "--kernel-db", "--plot", "--model-config", "--ray", "--format", "--budgets", "--tp", "--pp",
               "--replicas", "--slo", "--router", "--plots", "--timeline", "--sessions", "--system-prompt"}


def numeric_flags(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(subcommand, flag) for every single-valued flag of FLAG_BASES' subcommands whose type is not a string."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in FLAG_BASES:
        p = sub.choices[name.split()[0]]
        if " " in name:
            inner = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
            p = inner.choices[name.split()[1]]
        for a in p._actions:
            flag = next((s for s in a.option_strings if s.startswith("--")), None)
            if (flag is None or flag in NOT_NUMERIC or a.choices or a.nargs == 0 or a.type in (None, str)
                    or isinstance(a, argparse._HelpAction)):
                continue
            yield name, flag


def flag_cases(rng: random.Random, parser: argparse.ArgumentParser) -> Iterator[Case]:
    for name, flag in numeric_flags(parser):
        for bad in BAD_FLAG_VALUES:
            yield Case("flags", f"{name} {flag}={bad[:12]}", [*FLAG_BASES[name], f"{flag}={bad}"])


def all_cases(seed: int, parser: argparse.ArgumentParser, profile_json: dict, measurements: str) -> list[Case]:
    """Every family's cases, in a seeded order."""
    from tests.fuzz_corpus_review import measured_cases, new_flag_cases
    rng = random.Random(seed)
    makers: list[Callable[[], Iterator[Case]]] = [
        lambda: trace_cases(rng), lambda: config_cases(rng), lambda: deployment_cases(rng),
        lambda: price_cases(rng), lambda: profile_cases(rng, profile_json, measurements),
        lambda: flag_cases(rng, parser), lambda: measured_cases(rng), lambda: new_flag_cases(rng)]
    cases = [c for make in makers for c in make()]
    rng.shuffle(cases)
    return cases
