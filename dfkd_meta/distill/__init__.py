"""Knowledge distillation of a student from an ONNX teacher: the loop, its losses, the student's files."""
from .loop import DistillConfig, DistillResult, distill, teacher_convention
from .losses import LOSSES, Outputs, kd_loss, loss
from .online import distill_online
from .student import evaluate_pair, load_transfer_for, predict, teacher_logits, write_student

__all__ = ["LOSSES", "DistillConfig", "DistillResult", "Outputs", "distill", "distill_online", "evaluate_pair", "kd_loss",
           "load_transfer_for", "loss", "predict", "teacher_convention", "teacher_logits", "write_student"]
