"""Converters from our HF checkpoints to other runtimes' formats (`olmo2 convert ...`).

- `gguf_vocab.py`: the tokenizer as llama.cpp's `gpt2` BPE vocabulary metadata;
- `gguf_export.py`: weights + hyper-parameters as llama.cpp's `olmo2` architecture, streamed;
- `modelfile.py`: the ollama `Modelfile` written beside a GGUF.

Needs the `gguf` package (`pip install 'olmo2[gguf]'`); it is imported inside functions so the
CLI stays cheap to build.
"""
