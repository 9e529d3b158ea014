"""seqio registration of every dynpt task and mixture: `import tasks`.

Registration needs no data on disk; reading a task whose data is missing
fails with a message naming the task, the expected files and the command
that builds them.
"""

from tasks import downstream, mixtures, pretraining
from tasks.downstream import DOWNSTREAM_TASKS
from tasks.mixtures import MIXTURES, mixture_task_names
from tasks.pretraining import GENERATED_TASKS, PRETRAINING_TASKS

pretraining.register()
downstream.register()
mixtures.register()
