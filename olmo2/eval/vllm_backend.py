"""The `vllm` eval backend: the same requests and scoring, run by vLLM (GPUs, large runs).

    olmo2 eval --model allenai/OLMo-2-0425-1B --backend vllm --tasks gsm8k,truthfulqa --out RUN

Deliberately thin: it only maps olmo2's two request kinds onto vLLM's API, and every prompt,
answer extraction and metric stays in olmo2's task code, so a vLLM run is scored exactly as
a `native` or `hf` one.
- log-likelihoods: the context and continuation token ids (olmo2's pair rule,
  `scoring.encode_pair`) go in as one token prompt, with `prompt_logprobs=1`: vLLM then
  returns, for every prompt position, the log-prob and rank of the token actually there.
  The continuation's log-probs are summed; `is_greedy` means every one of them ranked 1.
- generation: greedy (`temperature=0`) with OLMES's stop strings, then cut at the earliest
  stop as for the other backends.

Not tested against vLLM here: vLLM needs a GPU and cannot be installed on this project's
CPU machines. tests/test_eval_vllm.py checks only this mapping, against a stand-in module
that implements the few vLLM calls used here on top of transformers.
"""
from __future__ import annotations

from collections.abc import Sequence

from olmo2.errors import Olmo2Error
from olmo2.eval.scoring import HFBackend, LoglikRequest, LoglikResult, cut_at_stops, encode_pair


class VLLMBackend:
    name = "vllm"

    def __init__(self, llm, tokenizer, model_path: str = "", max_length: int | None = None):
        self.llm, self.tok = llm, tokenizer
        self.model_path = model_path
        self.max_length = int(max_length or llm.llm_engine.model_config.max_model_len)
        self.eos_id = tokenizer.eos_token_id

    @classmethod
    def load(cls, model_path: str, dtype: str = "float32") -> "VLLMBackend":
        try:
            import vllm
        except ImportError:
            raise Olmo2Error("--backend vllm needs vLLM (pip install vllm, on a machine with a GPU); "
                             "use --backend native or hf here") from None
        llm = vllm.LLM(model=model_path, dtype=dtype, seed=0)
        return cls(llm, llm.get_tokenizer(), model_path)

    # vLLM's tokenizer is the transformers one: encode and render exactly as the hf backend does
    encode = HFBackend.encode
    apply_chat_template = HFBackend.apply_chat_template

    def loglikelihood(self, requests: Sequence[LoglikRequest], progress=None) -> list[LoglikResult]:
        from vllm import SamplingParams, TokensPrompt
        pairs = [encode_pair(self.encode, r.context, r.continuation) for r in requests]
        prompts = [TokensPrompt(prompt_token_ids=c + x) for c, x in pairs]
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1),
                                 use_tqdm=False)
        results = []
        for (c, x), o in zip(pairs, outs):
            steps = [o.prompt_logprobs[len(c) + i][t] for i, t in enumerate(x)]
            results.append(LoglikResult(float(sum(s.logprob for s in steps)), all(s.rank == 1 for s in steps),
                                        len(x)))
        if progress is not None:
            progress.update(len(requests))
        return results

    def generate_until(self, prompts: Sequence[str], stops: Sequence[str], max_new_tokens: int,
                       progress=None) -> list[str]:
        from vllm import SamplingParams, TokensPrompt
        ids = [self.encode(p) for p in prompts]
        longest = max((len(i) for i in ids), default=0)
        n_new = min(max_new_tokens, self.max_length - longest)
        if ids and n_new < 1:
            raise Olmo2Error(f"prompt of {longest} tokens leaves no room to generate in the model context "
                             f"{self.max_length}")
        sp = SamplingParams(max_tokens=n_new, temperature=0.0, stop=list(stops) or None)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], sp, use_tqdm=False)
        if progress is not None:
            progress.update(len(prompts))
        return [cut_at_stops(o.outputs[0].text, stops) for o in outs]
