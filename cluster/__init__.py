"""Ray orchestration: replicas as TP x EP actor groups, the local launcher, the autoscaler."""
