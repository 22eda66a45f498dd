"""Rendering search: an LLM-driven genetic search over RenderConfigs (the Glyph paper, section 3.4).

Imports render/, train/ (the style sampler) and, for the evaluation-harness objective, eval/."""
from .critic import Critic, CriticError
from .history import History
from .loop import DEFAULTS, Search, SearchError, SearchResult, load_settings, make_critic, run_search
from .objective import EvalObjective, Goal, Objective, Score, SyntheticObjective
from .operators import Rejected, check, crossover, mutate, tournament
from .space import Gene, SearchSpace, config_hash

__all__ = ["Critic", "CriticError", "History", "DEFAULTS", "Search", "SearchError", "SearchResult", "load_settings",
           "make_critic", "run_search", "EvalObjective", "Goal", "Objective", "Score", "SyntheticObjective",
           "Rejected", "check", "crossover", "mutate", "tournament", "Gene", "SearchSpace", "config_hash"]
