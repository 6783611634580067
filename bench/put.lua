-- wrk script for the PUT workload: a 1 KiB value per request.
wrk.method = "PUT"
wrk.body = string.rep("v", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
