"""The audit log: every admin action, who did it, when, what and why (`record_admin_action`)."""
