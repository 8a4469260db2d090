"""Energy from time spent per activity and the cluster's power figures (CoEdge).

CoEdge (Zeng et al., ToN 2021, §III-B) minimises Ec + Ex: the *dynamic*
computation energy (power while computing × computing time) plus the
transmission energy (radio power × transmitting time). Over a request of
makespan *T* a device also draws its idle power while it waits, so:

``E_total = busy_w·t_busy + idle_w·t_idle + tx_w·t_tx + rx_w·t_rx``  (J, times in s)
``E_dynamic = busy_w·t_busy + tx_w·t_tx + rx_w·t_rx``                 (CoEdge's Ec + Ex)

with ``t_idle = T − t_busy``. ``tx_w`` / ``rx_w`` are the radio's extra power
on top of the CPU state, since transfers overlap computing (``rx_w`` defaults
to ``tx_w`` in the cluster file).
"""

from __future__ import annotations

from ..cluster import Power


def energy_j(power: Power, busy_ms: float, idle_ms: float, tx_ms: float, rx_ms: float) -> float:
    """Total energy (J) of one device over a request."""
    return (power.busy_w * busy_ms + power.idle_w * idle_ms + power.tx_w * tx_ms + power.recv_w * rx_ms) / 1e3


def dynamic_energy_j(power: Power, busy_ms: float, tx_ms: float, rx_ms: float) -> float:
    """CoEdge's Ec + Ex (J): energy above idle."""
    return (power.busy_w * busy_ms + power.tx_w * tx_ms + power.recv_w * rx_ms) / 1e3
