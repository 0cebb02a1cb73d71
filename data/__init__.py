"""The data pipeline: download (data.download), tokenizer (data.tokenizer), tokenization (data.tokenize),
and the token shard format they share (data.shards). See data/README.md."""
