"""Model types (tasks) shared by the server and the tenant nodes; see `registry.get_task`.

Importing this package loads torch but no data; fl_server imports it, and it never imports fl_server.
"""

from fl_client.tasks.registry import TASKS, get_task, task_names
from fl_client.tasks.spec import MetricSpec, Record, TaskSpec, TrainingDefaults

__all__ = ["TASKS", "MetricSpec", "Record", "TaskSpec", "TrainingDefaults", "get_task", "task_names"]
