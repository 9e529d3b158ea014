"""Task mixing: the dynamic difficulty sampler, every baseline and the online mixers.

Each sampler module registers its classes (`dynpt.mixing.registry`) when it is
imported here; `make_sampler(name, ...)` builds any of them. See docs/mixing.md
for the algorithms, the options, the needs and the state format.
"""

from dynpt.mixing.ado import AdoSampler
from dynpt.mixing.aioli import AioliSampler
from dynpt.mixing.allocation import allocate_counts
from dynpt.mixing.allocation import difficulty_shares
from dynpt.mixing.base import Sampler
from dynpt.mixing.difficulty import DynamicSampler
from dynpt.mixing.difficulty import EasiestSampler
from dynpt.mixing.difficulty import HardestSampler
from dynpt.mixing.difficulty import LossReweightSampler
from dynpt.mixing.doremi import DoReMiSampler
from dynpt.mixing.factory import SAMPLERS
from dynpt.mixing.factory import RunFacts
from dynpt.mixing.factory import make_sampler
from dynpt.mixing.factory import needs
from dynpt.mixing.history import HISTORY_FILENAME
from dynpt.mixing.history import MixtureHistory
from dynpt.mixing.history import history_path
from dynpt.mixing.history import history_record
from dynpt.mixing.history import read_history
from dynpt.mixing.hosts import host_counts
from dynpt.mixing.hosts import host_slices
from dynpt.mixing.hosts import host_task_ids
from dynpt.mixing.hosts import task_row_ranges
from dynpt.mixing.odm import OnlineDataMixingSampler
from dynpt.mixing.registry import DEFAULT_SAMPLER
from dynpt.mixing.registry import EVEN_SAMPLER
from dynpt.mixing.softmax import SoftmaxSampler
from dynpt.mixing.static import FixedSampler
from dynpt.mixing.static import SizeSampler
from dynpt.mixing.static import TemperatureSampler
from dynpt.mixing.static import UniformSampler
from dynpt.mixing.stop_and_go import AntiCurriculumSampler
from dynpt.mixing.stop_and_go import CurriculumSampler
from dynpt.mixing.stop_and_go import StopAndGoSampler
from dynpt.mixing.unimax import UniMaxSampler
