"""Datasets for looplm: pre-training mixtures (token shards + manifest), SFT chat sets and RL prompt
sets, built from explicit sources (hub, local files or generated tasks).

Modules: `sources` (where documents come from), `mixture` (the token-share mixture builder),
`shards` (shard files and the `PretrainData` reader), `jsonl` (validated JSONL I/O and overlap
checks), `sft` / `rl` (chat and prompt set builders), `cli` (`looplm data ...`).
"""
