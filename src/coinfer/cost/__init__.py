"""Cost model, profiles, regressions and energy (torch-free; the profiler core is in ``measure``)."""

from .bandwidth import BandwidthTrace
from .calibration import BUILTIN, HostCalibration, load_calibration
from .model import CostModel, interpolate, load_cost_model
from .profile import DeviceProfile, LinkProbe, ProfileError, ProfileSet
from .regression import LayerRegression, LayerSample
from .wire import wire_bytes, wire_ratio

__all__ = ["BUILTIN", "BandwidthTrace", "CostModel", "DeviceProfile", "HostCalibration", "LayerRegression",
           "LayerSample", "LinkProbe", "ProfileError", "ProfileSet", "interpolate", "load_calibration",
           "load_cost_model", "wire_bytes", "wire_ratio"]
