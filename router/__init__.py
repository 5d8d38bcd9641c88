"""The router: OpenAI HTTP and gRPC front ends, harmony, admission, routing, Redis queues.

Never imports torch, oss_serve.workers or oss_serve.kernels.
"""
