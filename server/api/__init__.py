"""HTTP layer: routes (one module per endpoint group), auth, middleware and error mapping.

Routes do HTTP only: parse into protocol models, call the services in server/serving/, shape the
HTTP response. Every failure becomes an OpenAI error envelope in errors.py.
"""
