"""The rollout's agent loop (`mixed_r1_single_turn`): verl's single-turn loop, with every response ended
at the first image or video placeholder token it generates.

A rollout that does not mask `<|image_pad|>` and `<|video_pad|>` out of its logits samples them (a model
early in training does, often; verl 0.9.1's vLLM server masks them, the CPU tests' transformers rollout
does not). verl then reads the token as a placeholder for an image the row does not hold: computing
the M-RoPE positions of the response fails and the sample is dropped from its GRPO group (the model's
forward pass would fail the same way, for the image features would not match the placeholders). The
placeholder is replaced by the end-of-sequence token and masked out of the loss, so the policy is only
trained on tokens it sampled; the response gets no answer and scores as such. (Dropping the
placeholder alone could leave an empty response, which verl cannot score.)
"""

from __future__ import annotations

import logging
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.utils.tokenizer import get_processor_token_id

logger = logging.getLogger(__name__)

AGENT_LOOP_NAME = "mixed_r1_single_turn"


def end_at_placeholder_tokens(output: AgentLoopOutput, placeholder_ids: set[int], end_id: int) -> bool:
    """Ends `output`'s response at its first token in `placeholder_ids`, which becomes `end_id` outside
    the loss mask; True if the response held one."""
    end = next((i for i, token in enumerate(output.response_ids) if token in placeholder_ids), None)
    if end is None:
        return False
    output.response_ids = [*output.response_ids[:end], end_id]
    output.response_mask = [*output.response_mask[:end], 0]
    if output.response_logprobs is not None:
        output.response_logprobs = [*output.response_logprobs[:end], 0.0]
    return True


@register(AGENT_LOOP_NAME)
class MixedR1SingleTurnAgentLoop(SingleTurnAgentLoop):
    # verl builds one agent loop per sample; the count is per agent-loop worker process.
    responses_ended = 0

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        output = await super().run(sampling_params, **kwargs)
        ids = (get_processor_token_id(self.processor, kind) for kind in ("image", "video"))
        placeholder_ids = {token_id for token_id in ids if token_id is not None}
        if end_at_placeholder_tokens(output, placeholder_ids, self.tokenizer.eos_token_id):
            cls = MixedR1SingleTurnAgentLoop
            cls.responses_ended += 1
            if cls.responses_ended == 1:
                logger.warning(
                    "a response generated an image/video placeholder token and was ended there "
                    "(logged once per agent-loop worker)"
                )
        return output
