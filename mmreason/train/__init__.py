"""Training: the stage loop (`stages`), cold-start SFT (`sft`), GRPO (`grpo`), rejection-sampling SFT (`rejection`)
and its offline form `mmreason data distill` (`distill`), a GRPO step's groups with online filtering and refill
(`online_filter`), per-prompt statistics (`prompt_stats`), the RL maths (`rl`), the optimizer
step and periodic eval/checkpoint shared by both (`step`), save and resume (`checkpoint`), checkpoint checks and
the choice of the checkpoint to resume (`verify`), held-out evaluation (`evaluate`) and several processes through
accelerate (`dist`).
"""
