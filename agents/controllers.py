"""The LSTM controllers of N2N learning (Ashok et al., ICLR 2018), as plain torch modules.

Both controllers read the observation layout of the N2N environments: ``sequence`` holds every
unit's descriptor (flattened ``(max_units, descriptor_size)``, padding rows at the end), ``valid``
marks the real units, ``position`` is the one-hot current unit and ``decisions`` the value each
earlier step wrote (for removal 1 = kept, 0 = removed; for shrinkage the chosen ratio). Because
descriptors are network-independent, one controller runs on any teacher up to ``max_units`` —
its parameters do not depend on ``max_units`` at all.

- ``"bidirectional"`` (:class:`RemovalController`, the paper's removal controller): a
  bidirectional LSTM over the whole sequence; each unit's logits see every other unit, and the
  actions of one episode are independent given the network.
- ``"autoregressive"`` (:class:`ShrinkController`, the paper's shrink controller): step ``t``
  reads descriptor ``x_t`` and the one-hot previous action (a start token at ``t = 0``).
- ``"encoder-decoder"`` (:class:`EncoderDecoderController`): a bidirectional encoder reads the
  whole network; an autoregressive decoder, started from the encoder's summary, reads the
  encoding of unit ``t`` and the previous action. Each decision sees the whole network *and*
  the decisions already made.
- ``"actor-critic"`` (:class:`ActorCriticController`): the autoregressive controller with a value
  head; the agent's baseline of each step is then the moving average plus the learned value of
  that step (what the network and the actions so far add to the expected reward).

Every controller takes either action space; the defaults are the paper's pairing (bidirectional
for removal, autoregressive for shrinkage).

:meth:`Controller.distribution` gives per-step categorical distributions over a whole episode
(what an update needs); :meth:`Controller.step_distribution` gives the distribution of the
current step only (what acting needs). Forbidden actions get ``-inf`` logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.distributions import Categorical
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from agents.names import CONTROLLER_ALIASES, CONTROLLER_KINDS, controller_kind  # noqa: F401 (re-exported)

ObsBatch = Mapping[str, torch.Tensor]


class Controller(nn.Module):
    """Common interface of the N2N controllers.

    Args:
        descriptor_size: length of one unit descriptor (15 for the N2N environments).
        n_actions: number of actions per step (2 for removal, one per ratio for shrinkage).
        hidden_size: LSTM hidden units per direction (paper: 30).
        num_layers: stacked LSTM layers (paper: 2).
        action_values: the value an action writes into ``observation["decisions"]`` (action ``i``
            writes ``action_values[i]``). Only needed to read an episode's earlier actions back from
            an observation (the shrink controller, acting without the episode's history).
    """

    def __init__(
        self,
        descriptor_size: int,
        n_actions: int,
        hidden_size: int = 30,
        num_layers: int = 2,
        action_values: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if descriptor_size < 1 or n_actions < 2 or hidden_size < 1 or num_layers < 1:
            raise ValueError(
                f"controller sizes must be positive with at least 2 actions; got descriptor_size="
                f"{descriptor_size}, n_actions={n_actions}, hidden_size={hidden_size}, num_layers={num_layers}"
            )
        if action_values is not None and len(action_values) != n_actions:
            raise ValueError(
                f"action_values has {len(action_values)} entries but there are {n_actions} actions"
            )
        self.descriptor_size = descriptor_size
        self.n_actions = n_actions
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        # A buffer moves with .to(device) but is not a parameter: it describes the environment,
        # so it is left out of the state dict and a controller transfers between ratio sets of equal size.
        values = torch.tensor(
            action_values if action_values is not None else [], dtype=torch.float32
        )
        self.register_buffer("action_values", values, persistent=False)

    # Whether step t depends on the actions before it (then they must be known to act).
    autoregressive = True
    # Whether the controller also estimates the value (expected reward) of each step.
    has_critic = False

    # ---- to implement ---------------------------------------------------------------------------
    def logits(
        self, sequence: torch.Tensor, valid: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        """Unmasked logits ``(B, T, n_actions)``.

        Args:
            sequence: descriptors ``(B, T, descriptor_size)``.
            valid: ``(B, T)`` bool, a prefix of each row (padding at the end).
            previous: ``(B, T)`` long, the action taken at step ``t - 1`` (``n_actions`` = start).
        """
        raise NotImplementedError

    def values(self, obs: ObsBatch, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Estimated reward ``(B, T)`` of each step, given the actions before it (critics only)."""
        raise NotImplementedError(f"{type(self).__name__} has no critic")

    # ---- shared ---------------------------------------------------------------------------------
    def distribution(
        self,
        obs: ObsBatch,
        actions: torch.Tensor | None = None,
        action_masks: torch.Tensor | None = None,
    ) -> Categorical:
        """Per-step action distributions over whole episodes.

        Args:
            obs: a batch of observations (tensors with a leading batch dimension); only
                ``sequence``, ``valid`` and (without ``actions``) ``decisions`` are read.
            actions: ``(B, T)`` the episodes' actions at each unit (any value where none was
                taken); the autoregressive controller conditions step ``t`` on ``actions[:, t-1]``.
                Without it earlier actions are read back from ``obs["decisions"]``.
            action_masks: ``(B, T, n_actions)`` allowed actions per step; ``None`` allows all.

        Returns:
            A ``Categorical`` with batch shape ``(B, T)``. Padding steps allow every action (so
            nothing is NaN); callers must ignore them.
        """
        return Categorical(logits=self._masked_logits(obs, actions, action_masks))

    def _masked_logits(
        self, obs: ObsBatch, actions: torch.Tensor | None, action_masks: torch.Tensor | None
    ) -> torch.Tensor:
        sequence, valid = self._unpack(obs)
        previous = self._previous_actions(obs, actions, valid)
        logits = self.logits(sequence, valid, previous)
        if action_masks is not None:
            allowed = action_masks.to(device=logits.device, dtype=torch.bool)
            allowed = allowed | ~valid.unsqueeze(-1)
            logits = logits.masked_fill(~allowed, float("-inf"))
        return logits

    def step_distribution(
        self,
        obs: ObsBatch,
        action_masks: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
    ) -> Categorical:
        """The distribution of the current step's action (the unit ``obs["position"]`` points at).

        Args:
            obs: a batch of observations.
            action_masks: ``(B, n_actions)`` allowed actions at the current step.
            actions: optional ``(B, T)`` actions taken so far in each episode (see
                :meth:`distribution`); an agent that tracks its episodes passes them so that acting
                does not depend on how the environment encodes ``decisions``.

        Returns:
            A ``Categorical`` with batch shape ``(B,)``.
        """
        logits = self._masked_logits(obs, actions, None)
        step = obs["position"].argmax(dim=-1)
        logits = logits[torch.arange(logits.shape[0], device=logits.device), step]
        if action_masks is not None:
            allowed = action_masks.to(device=logits.device, dtype=torch.bool)
            logits = logits.masked_fill(~allowed, float("-inf"))
        return Categorical(logits=logits)

    def _unpack(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        valid = obs["valid"] > 0.5
        sequence = obs["sequence"].reshape(valid.shape[0], valid.shape[1], self.descriptor_size)
        return sequence.float(), valid

    def _previous_actions(
        self, obs: ObsBatch, actions: torch.Tensor | None, valid: torch.Tensor
    ) -> torch.Tensor:
        if actions is None:
            actions = self.actions_from_decisions(obs["decisions"])
        actions = actions.to(device=valid.device, dtype=torch.long).clamp(0, self.n_actions - 1)
        start = torch.full_like(actions[:, :1], self.n_actions)
        return torch.cat([start, actions[:, :-1]], dim=1)

    def actions_from_decisions(self, decisions: torch.Tensor) -> torch.Tensor:
        """Read actions back from ``decisions`` values (nearest of ``action_values``)."""
        if self.action_values.numel() == 0:
            if not self.autoregressive:  # earlier actions are ignored: any placeholder will do
                return torch.zeros_like(decisions, dtype=torch.long)
            raise ValueError(
                f"the {type(self).__name__} cannot read earlier actions from "
                "observation['decisions'] without action_values; pass policy_kwargs="
                "{'action_values': [...]} (the value each action writes) or give the episode's "
                "actions explicitly"
            )
        distance = (decisions.unsqueeze(-1) - self.action_values.to(decisions.device)).abs()
        return distance.argmin(dim=-1)


class RemovalController(Controller):
    """Bidirectional LSTM over the valid descriptor sequence with a keep/remove head per unit.

    Args:
        descriptor_size: length of one unit descriptor.
        n_actions: actions per unit (2: keep, remove).
        hidden_size: LSTM hidden units per direction (paper: 30).
        num_layers: stacked bidirectional layers (paper: 2).
        action_values: unused by this controller (its steps do not depend on earlier actions);
            accepted so both controllers share one constructor.
    """

    def __init__(
        self,
        descriptor_size: int,
        n_actions: int = 2,
        hidden_size: int = 30,
        num_layers: int = 2,
        action_values: Sequence[float] | None = None,
    ) -> None:
        super().__init__(descriptor_size, n_actions, hidden_size, num_layers, None)
        self.lstm = nn.LSTM(
            descriptor_size, hidden_size, num_layers, batch_first=True, bidirectional=True
        )
        self.head = nn.Linear(2 * hidden_size, n_actions)

    autoregressive = False

    def logits(
        self, sequence: torch.Tensor, valid: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        return self.head(_bidirectional(self.lstm, sequence, valid))


def _bidirectional(lstm: nn.LSTM, sequence: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Outputs ``(B, T, 2H)`` of a bidirectional LSTM over the valid prefix of each row.

    Packing keeps padding rows out of the backward direction, so a unit's output is the same
    whatever ``max_units`` the observation was padded to.
    """
    lengths = valid.sum(dim=1).clamp(min=1).cpu()
    packed = pack_padded_sequence(sequence, lengths, batch_first=True, enforce_sorted=False)
    output, _ = lstm(packed)
    output, _ = pad_packed_sequence(output, batch_first=True, total_length=sequence.shape[1])
    return output


class ShrinkController(Controller):
    """Autoregressive LSTM: step ``t`` reads ``x_t`` and the one-hot previous action.

    The stacked cells live in one registered ``nn.LSTM`` (the original code kept its cells in a
    Python list, so the optimiser never saw them).

    Args:
        descriptor_size: length of one unit descriptor.
        n_actions: number of ratios to pick from.
        hidden_size: LSTM hidden units (paper: 30).
        num_layers: stacked LSTM layers (paper: 2).
        action_values: the ratio each action writes into ``decisions``; needed to act from an
            observation alone (``predict``), not for learning.
    """

    def __init__(
        self,
        descriptor_size: int,
        n_actions: int,
        hidden_size: int = 30,
        num_layers: int = 2,
        action_values: Sequence[float] | None = None,
    ) -> None:
        super().__init__(descriptor_size, n_actions, hidden_size, num_layers, action_values)
        # One more input than actions: the start token of the first step.
        self.lstm = nn.LSTM(
            descriptor_size + n_actions + 1, hidden_size, num_layers, batch_first=True
        )
        self.head = nn.Linear(hidden_size, n_actions)

    def logits(
        self, sequence: torch.Tensor, valid: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        # Teacher forcing: with every earlier action known, the whole episode runs in one call,
        # and step t sees only steps <= t, exactly as when the actions were sampled one by one.
        previous_one_hot = nn.functional.one_hot(previous, self.n_actions + 1).to(sequence.dtype)
        output, _ = self.lstm(torch.cat([sequence, previous_one_hot], dim=-1))
        return self.head(output)


class EncoderDecoderController(Controller):
    """A bidirectional encoder over the whole network and an autoregressive decoder over its units.

    The decoder's initial hidden state is a projection of the encoder's mean output (a summary of
    the network); step ``t`` reads the encoder's output at unit ``t`` and the one-hot previous
    action. Teacher forcing runs an episode in one call, as for :class:`ShrinkController`.
    """

    def __init__(
        self,
        descriptor_size: int,
        n_actions: int,
        hidden_size: int = 30,
        num_layers: int = 2,
        action_values: Sequence[float] | None = None,
    ) -> None:
        super().__init__(descriptor_size, n_actions, hidden_size, num_layers, action_values)
        self.encoder = nn.LSTM(
            descriptor_size, hidden_size, num_layers, batch_first=True, bidirectional=True
        )
        self.bridge = nn.Linear(2 * hidden_size, hidden_size)
        self.decoder = nn.LSTM(
            2 * hidden_size + n_actions + 1, hidden_size, num_layers, batch_first=True
        )
        self.head = nn.Linear(hidden_size, n_actions)

    def logits(
        self, sequence: torch.Tensor, valid: torch.Tensor, previous: torch.Tensor
    ) -> torch.Tensor:
        encoded = _bidirectional(self.encoder, sequence, valid)
        weight = valid.unsqueeze(-1).to(encoded.dtype)
        summary = (encoded * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)
        h0 = torch.tanh(self.bridge(summary)).unsqueeze(0).repeat(self.num_layers, 1, 1)
        previous_one_hot = nn.functional.one_hot(previous, self.n_actions + 1).to(encoded.dtype)
        output, _ = self.decoder(
            torch.cat([encoded, previous_one_hot], dim=-1), (h0.contiguous(), torch.zeros_like(h0))
        )
        return self.head(output)


class ActorCriticController(ShrinkController):
    """The autoregressive controller (the actor) with a critic of the same shape beside it.

    The value of step ``t`` estimates the episode's reward given the network and the actions
    before ``t``, relative to the agent's moving average ``b``; REINFORCE then weighs each step's
    log-probability by ``R − b − V_t`` and fits ``V_t`` to ``R − b`` (a learned, state-dependent
    baseline: the actor–critic variant of N2N). The critic has its own LSTM: sharing the actor's
    let the value error pull on the policy and slowed learning.
    """

    has_critic = True

    def __init__(
        self,
        descriptor_size: int,
        n_actions: int,
        hidden_size: int = 30,
        num_layers: int = 2,
        action_values: Sequence[float] | None = None,
    ) -> None:
        super().__init__(descriptor_size, n_actions, hidden_size, num_layers, action_values)
        self.critic = nn.LSTM(
            descriptor_size + n_actions + 1, hidden_size, num_layers, batch_first=True
        )
        self.value_head = nn.Linear(hidden_size, 1)

    def values(self, obs: ObsBatch, actions: torch.Tensor | None = None) -> torch.Tensor:
        sequence, valid = self._unpack(obs)
        previous = self._previous_actions(obs, actions, valid)
        previous_one_hot = nn.functional.one_hot(previous, self.n_actions + 1).to(sequence.dtype)
        output, _ = self.critic(torch.cat([sequence, previous_one_hot], dim=-1))
        return self.value_head(output).squeeze(-1)


def make_controller(
    kind: str,
    descriptor_size: int,
    n_actions: int,
    hidden_size: int = 30,
    num_layers: int = 2,
    action_values: Sequence[float] | None = None,
) -> Controller:
    """Build a controller by name (one of :data:`CONTROLLER_KINDS`, or a paper alias)."""
    classes: dict[str, type[Controller]] = {
        "bidirectional": RemovalController,
        "autoregressive": ShrinkController,
        "encoder-decoder": EncoderDecoderController,
        "actor-critic": ActorCriticController,
    }
    kind = controller_kind(kind)
    return classes[kind](descriptor_size, n_actions, hidden_size, num_layers, action_values)
