import os

# LiteLLM fetches a price map from the internet at import time unless told not to.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
