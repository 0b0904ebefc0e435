"""``glocalk serve``: a saved model over HTTP (FastAPI + uvicorn, the optional extra ``serve``).

``service`` holds the model and answers (no web framework); ``http`` is the FastAPI shell over it;
``server`` runs it with uvicorn and reloads the model on SIGHUP or when its directory changes.
"""
