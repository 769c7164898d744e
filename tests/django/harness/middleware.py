"""Who is asking, and a mark on every answer that Django itself wrote.

The harness has no user table: the `sessionid` cookie `u<digits>` is user
<digits> on the free plan, `p<digits>` the same on the pro plan; anything else
is anonymous. Every response that went through Django carries
`X-Harness-Django: 1`, so a test can tell Django's answers from the proxy's
and from gunicorn's own errors."""


class HarnessMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.quota_user = None
        request.quota_plan = None
        cookie = request.COOKIES.get("sessionid", "")
        if len(cookie) > 1 and cookie[0] in "up" and cookie[1:].isascii() and cookie[1:].isdigit():
            request.quota_user = str(int(cookie[1:]))
            request.quota_plan = "free" if cookie[0] == "u" else "pro"
        response = self.get_response(request)
        response["X-Harness-Django"] = "1"
        return response
